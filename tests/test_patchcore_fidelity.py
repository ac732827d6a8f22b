"""PatchCore as the official code computes it (squared distances, int(N * ratio), float32), eq. 7 on small
banks, and one-line errors for weights of the wrong shape and broken memory banks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.api import RunContext
from adbench.backbones import WeightsError, build_backbone
from adbench.data.errors import ConfigError
from adbench.data.synthetic import SyntheticDataModule
from methods.patchcore.method import PatchCore

from .conftest import compose_cfg, small_synthetic_overrides


def _patchcore(*overrides: str) -> PatchCore:
    torch.manual_seed(0)  # the same random-init backbone every time
    return PatchCore(compose_cfg(["preset=tiny", *overrides]).method, RunContext(progress=False))


@pytest.fixture(scope="module")
def washer(small_synthetic_root):
    return SyntheticDataModule(root=small_synthetic_root, category="washer", image_size=64, crop_size=None,
                               batch_size=8, num_workers=0, n_train=12, n_test_good=6, n_per_defect=3,
                               synth_size=128).setup()


def test_paper_defaults_follow_the_official_code():
    cfg = compose_cfg(["method=patchcore"]).method
    assert cfg.score_distance == "squared" and cfg.amp is False and cfg.knn.index == "flat"
    assert cfg.coreset.projection_dim == 128 and "exact" not in cfg.coreset


def test_squared_scores_and_int_coreset_size(washer):
    """12 images x 64 patches at ratio 0.07: 53.76 -> 53 rows (round would keep 54); the default image scores
    are faiss's squared distances, ``euclidean`` their square roots (one neighbour: the same maximal patch)."""
    model = _patchcore("method.coreset.ratio=0.07")
    model.fit(washer.train_dataloader())
    assert len(model.bank) == 53 and model.timings["n_selected"] == 53
    squared = model.predict(washer.test_dataloader())
    model.cfg.score_distance = "euclidean"
    euclid = model.predict(washer.test_dataloader())
    assert np.allclose(squared.image_scores, euclid.image_scores ** 2, rtol=1e-5)
    assert not np.allclose(squared.image_scores, euclid.image_scores)
    # the map is the blurred upsampled patch grid of the chosen distance: squared is not the square of euclidean
    assert not np.allclose(squared.anomaly_maps, euclid.anomaly_maps ** 2, rtol=1e-3)
    d2 = np.array([[4.0, 9.0]])
    assert model._patch_scores(d2)[0] == pytest.approx(2.5)
    model.cfg.score_distance = "squared"
    assert model._patch_scores(d2)[0] == pytest.approx(6.5)
    with pytest.raises(ConfigError, match="method.score_distance"):
        _patchcore("method.score_distance=manhattan")


def _eq7(query: torch.Tensor, bank: torch.Tensor, m_star: int, score: float, b: int) -> float:
    """Paper eq. 7 with the b nearest bank rows of m* (m* first), by brute force in float64."""
    near = torch.argsort(torch.cdist(bank[m_star][None].double(), bank.double())[0])[:b]
    d = torch.cdist(query[None].double(), bank[near].double())[0]
    return float((1 - torch.softmax(d, 0)[0]) * score)


def test_reweight_clamps_neighbours_to_the_bank():
    """More neighbours asked than the bank holds: faiss pads with -1; the weight must use the real rows only."""
    model = _patchcore("method.reweight=true")
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(5, 8, generator=g)
    model._build_index(bank.clone())
    emb = torch.randn(2, 4, 8, generator=g)  # [B, h*w, D]
    d2, ids = model._search(emb.reshape(8, 8), 1)
    patch = model._patch_scores(d2).reshape(2, 4)
    model.cfg.reweight_neighbours = 9
    got = model._reweight(emb, patch, ids.reshape(2, 4, 1))
    for i in range(2):
        j = int(np.argmax(patch[i]))
        want = _eq7(emb[i, j], bank, int(ids.reshape(2, 4)[i, j]), float(patch[i, j]), 5)
        assert got[i] == pytest.approx(want, rel=1e-5)
    model.cfg.reweight_neighbours = 5
    assert np.allclose(model._reweight(emb, patch, ids.reshape(2, 4, 1)), got)


def test_weights_of_the_wrong_shape_one_line(tmp_path):
    state = build_backbone("mobilenet_v2", "none").state_dict()
    state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)  # the right keys, a tensor of another width
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(WeightsError) as info:
        build_backbone("mobilenet_v2", str(tmp_path / "narrow.pth"))
    msg = str(info.value)
    assert "\n" not in msg and "narrow.pth" in msg and "does not fit the backbone" in msg
    assert "features.0.0.weight" in msg and "method.backbone.weights" in msg


@pytest.fixture(scope="module")
def saved_run(small_synthetic_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("fidelity_results")
    from adbench.run import run

    record = run(compose_cfg(["preset=tiny", f"results_dir={results}", "save_model=true",
                              *small_synthetic_overrides(small_synthetic_root)]))
    from pathlib import Path

    return Path(record["checkpoint"])


@pytest.mark.parametrize("damage", ["empty", "nan"])
def test_broken_memory_bank_at_load_one_line_exit_2(saved_run, tmp_path, capsys, damage):
    import shutil

    from adbench.predict import main

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_run, ckpt)
    state = torch.load(ckpt / "patchcore.pt", weights_only=True)
    bank = state["bank"]
    if damage == "empty":
        state["bank"] = bank[:0]
    else:
        bank = bank.clone()
        bank[3, 2] = float("nan")
        state["bank"] = bank
    torch.save(state, ckpt / "patchcore.pt")
    # as if the run itself had written the broken bank: the manifest lists the file as it now is
    import hashlib
    import json

    manifest = json.loads((ckpt / "adbench_checkpoint.json").read_text())
    data = (ckpt / "patchcore.pt").read_bytes()
    manifest["files"]["patchcore.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "adbench_checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="memory bank") as info:
        PatchCore.load(ckpt, RunContext(progress=False))
    assert str(ckpt / "patchcore.pt") in str(info.value) and "\n" not in str(info.value)
    img_dir = tmp_path / "in"
    img_dir.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), (128, 128, 128)).save(img_dir / "a.png")
    capsys.readouterr()
    assert main([f"checkpoint={ckpt}", f"input={img_dir}", f"output={tmp_path / 'out'}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "memory bank" in err[0] and "patchcore.pt" in err[0], err
