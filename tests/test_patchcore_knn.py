"""Approximate nearest-neighbour indexes of PatchCore's memory bank: recall against exact search, options,
and the index saved and read back with the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.api import RunContext
from adbench.data.errors import ConfigError
from adbench.data.synthetic import SyntheticDataModule
from methods.patchcore.knn import KnnSpec, build_index, index_kind
from methods.patchcore.method import PatchCore

from .conftest import compose_cfg


@pytest.fixture(scope="module")
def features() -> tuple[np.ndarray, np.ndarray]:
    """A bank [8000, 32] of 100 Gaussian clusters (like patch features: many near neighbours) and 400 queries."""
    rng = np.random.default_rng(0)
    centres = 3 * rng.standard_normal((100, 32))
    bank = centres[rng.integers(0, 100, 8000)] + rng.standard_normal((8000, 32))
    queries = centres[rng.integers(0, 100, 400)] + rng.standard_normal((400, 32))
    return np.ascontiguousarray(bank, dtype=np.float32), np.ascontiguousarray(queries, dtype=np.float32)


def _recall(bank: np.ndarray, queries: np.ndarray, spec: KnnSpec) -> tuple[float, np.ndarray]:
    exact_d, exact_i = build_index(bank, KnnSpec()).search(queries, 1)
    d, i = build_index(bank, spec).search(queries, 1)
    return float(np.mean(i[:, 0] == exact_i[:, 0])), d[:, 0] / np.maximum(exact_d[:, 0], 1e-12)


def test_flat_is_exact(features):
    bank, queries = features
    d, i = build_index(bank, KnnSpec()).search(queries[:50], 1)
    brute = ((queries[:50, None].astype(np.float64) - bank[None]) ** 2).sum(-1)
    assert np.array_equal(i[:, 0], brute.argmin(1))
    assert np.allclose(d[:, 0], brute.min(1), rtol=1e-4)


@pytest.mark.parametrize("spec, min_recall", [(KnnSpec(index="hnsw"), 0.95), (KnnSpec(index="ivf"), 0.9)])
def test_approximate_recall_against_flat(features, spec, min_recall):
    bank, queries = features
    recall, ratio = _recall(bank, queries, spec)
    assert recall >= min_recall, recall
    assert ratio.min() >= 1 - 1e-5  # an approximate neighbour is never nearer than the exact one
    assert np.median(ratio) == pytest.approx(1.0, abs=1e-6)


def test_search_parameters_trade_recall(features):
    """More candidates (HNSW ef_search) or more lists visited (IVF nprobe) -> higher recall; all lists = exact."""
    bank, queries = features
    low_h, _ = _recall(bank, queries, KnnSpec(index="hnsw", hnsw_m=4, ef_construction=8, ef_search=1))
    high_h, _ = _recall(bank, queries, KnnSpec(index="hnsw", hnsw_m=4, ef_construction=8, ef_search=128))
    assert low_h < high_h
    low_i, _ = _recall(bank, queries, KnnSpec(index="ivf", nlist=128, nprobe=1))
    all_i, ratio = _recall(bank, queries, KnnSpec(index="ivf", nlist=128, nprobe=128))
    assert low_i < all_i == 1.0 and np.allclose(ratio, 1.0, rtol=1e-5)


def test_ivf_lists_capped_by_bank_size():
    bank = np.random.default_rng(1).standard_normal((390, 8)).astype(np.float32)
    index = build_index(bank, KnnSpec(index="ivf", nlist=256))
    assert index_kind(index) == "ivf" and index.nlist == 10 and index.ntotal == 390


@pytest.mark.parametrize("override, match", [("method.knn.index=annoy", "method.knn.index"),
                                             ("method.knn.nprobe=0", "method.knn.nprobe"),
                                             ("method.knn.hnsw_m=two", "method.knn.hnsw_m")])
def test_bad_knn_options_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        PatchCore(compose_cfg(["preset=tiny", override]).method, RunContext(progress=False))


@pytest.fixture(scope="module")
def washer(small_synthetic_root):
    return SyntheticDataModule(root=small_synthetic_root, category="washer", image_size=64, crop_size=None,
                               batch_size=8, num_workers=0, n_train=12, n_test_good=6, n_per_defect=3,
                               synth_size=128).setup()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_saved_and_loaded(washer, tmp_path, kind):
    """The fitted index is written to index.faiss and read back as it is (same scores, no re-training)."""
    torch.manual_seed(0)
    cfg = compose_cfg(["preset=tiny", "method.coreset.ratio=0.5", f"method.knn.index={kind}",
                       "method.knn.ef_search=8", "method.knn.nprobe=2"]).method
    model = PatchCore(cfg, RunContext(progress=False))
    model.fit(washer.train_dataloader())
    assert index_kind(model.index) == kind and model.index.ntotal == len(model.bank) == 384
    before = model.predict(washer.test_dataloader())
    model.save(tmp_path)
    loaded = PatchCore.load(tmp_path, RunContext(progress=False))
    assert index_kind(loaded.index) == kind and torch.equal(loaded.bank, model.bank)
    if kind == "hnsw":
        assert loaded.index.hnsw.efSearch == 8
    else:
        assert loaded.index.nprobe == 2 and loaded.index.nlist == 384 // 39
    after = loaded.predict(washer.test_dataloader())
    assert np.array_equal(before.image_scores, after.image_scores)
    assert np.array_equal(before.anomaly_maps, after.anomaly_maps)
    # an index file that does not belong to the bank is refused with the file's name
    import faiss

    faiss.write_index(faiss.IndexFlatL2(model.bank.shape[1]), str(tmp_path / "index.faiss"))
    with pytest.raises(ConfigError, match="index.faiss does not match"):
        PatchCore.load(tmp_path, RunContext(progress=False))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_image_scores_exact_with_an_approximate_index(features, kind):
    """A coarse approximate index misses neighbours; the maximal patch of every image is re-scored until it is
    exact, so image scores equal exact search's while other patches may stay approximate."""
    bank, queries = features
    emb = torch.from_numpy(queries[:400]).reshape(10, 40, 32)  # 10 "images" of 40 patches
    exact = PatchCore(compose_cfg(["preset=tiny"]).method, RunContext(progress=False))
    exact._build_index(torch.from_numpy(bank.copy()))
    d2, _ = exact._search(emb.reshape(400, 32), 1)
    want = exact._patch_scores(d2).reshape(10, 40)
    coarse = ["method.knn.hnsw_m=4", "method.knn.ef_construction=8", "method.knn.ef_search=1"] if kind == "hnsw" \
        else ["method.knn.nlist=128", "method.knn.nprobe=1"]
    approx = PatchCore(compose_cfg(["preset=tiny", f"method.knn.index={kind}", *coarse]).method, RunContext(progress=False))
    approx._build_index(torch.from_numpy(bank.copy()))
    d2, ids = approx._search(emb.reshape(400, 32), 1)
    got = approx._patch_scores(d2).reshape(10, 40)
    assert not np.allclose(got.max(1), want.max(1), rtol=1e-4)  # the coarse index does miss maxima
    approx._exact_maxima(emb, got, ids.reshape(10, 40, 1))
    assert np.allclose(got.max(1), want.max(1), rtol=1e-4)
    assert (got >= want * (1 - 1e-4)).all()  # never below the exact scores
