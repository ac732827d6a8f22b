"""PatchCore: patch features as in the reference, greedy coreset, weights handling, real MVTec categories."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adbench.backbones import FeatureExtractor, WeightsError, build_backbone
from adbench.run import run
from methods.patchcore.coreset import greedy_coreset
from methods.patchcore.model import PatchFeatures

from .conftest import REAL_CATEGORIES, best_baseline, compose_cfg, real_category_root


class _TwoLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(5, 7, 3, stride=2, padding=1)

    def forward(self, x):
        return self.b(self.a(x))


def reference_patch_features(feats, layer_dim, embed_dim):
    """The official order: unfold 3x3, upsample the unfolded deeper patches, pool each layer, pool the stack."""
    ref_h, ref_w = feats[0].shape[-2:]
    per_layer = []
    for f in feats:
        b, c, h, w = f.shape
        u = F.unfold(f, 3, padding=1).reshape(b, c, 3, 3, h, w)
        if (h, w) != (ref_h, ref_w):
            u = u.permute(0, 1, 2, 3, 4, 5).reshape(b, c * 9, h, w)
            u = F.interpolate(u, size=(ref_h, ref_w), mode="bilinear", align_corners=False).reshape(b, c, 3, 3, ref_h, ref_w)
        u = u.permute(0, 4, 5, 1, 2, 3).reshape(-1, c * 9)  # [B*h*w, C*9]
        per_layer.append(F.adaptive_avg_pool1d(u[:, None], layer_dim)[:, 0])
    stacked = torch.stack(per_layer, dim=1).reshape(len(per_layer[0]), 1, -1)
    return F.adaptive_avg_pool1d(stacked, embed_dim)[:, 0]


def test_patch_features_match_reference_order():
    torch.manual_seed(0)
    net = _TwoLayer()
    model = PatchFeatures(FeatureExtractor(net, ["a", "b"]), layer_dim=16, embed_dim=12)
    x = torch.randn(2, 3, 32, 32)
    emb, grid = model(x)
    assert grid == (16, 16) and emb.shape == (2, 256, 12)
    ref = reference_patch_features([net.a(x), net.b(net.a(x))], 16, 12)
    assert torch.allclose(emb.reshape(-1, 12), ref, atol=1e-5)


def brute_force_greedy(x: torch.Tensor, n: int, start: list[int]) -> list[int]:
    d = torch.cdist(x, x)
    min_d = d[:, start].mean(1)
    out = []
    for _ in range(n):
        i = int(torch.argmax(min_d))
        out.append(i)
        min_d = torch.minimum(min_d, d[:, i])
    return out


def test_exact_greedy_coreset_matches_brute_force():
    torch.manual_seed(0)
    x = torch.randn(500, 16, dtype=torch.float64).float()
    idx = greedy_coreset(x, 40, projection_dim=None, start_points=10, seed=3, show_progress=False)
    start = torch.randperm(500, generator=torch.Generator().manual_seed(3))[:10].tolist()
    assert idx.tolist() == brute_force_greedy(x.double(), 40, start)
    assert len(set(idx.tolist())) == 40


def test_coreset_deterministic_and_covers():
    torch.manual_seed(1)
    x = torch.cat([torch.randn(300, 32), 40 * torch.eye(32)[:5]])  # 5 far outliers, far from each other
    a = greedy_coreset(x, 30, projection_dim=8, seed=0, show_progress=False)
    b = greedy_coreset(x, 30, projection_dim=8, seed=0, show_progress=False)
    assert torch.equal(a, b)
    assert set(range(300, 305)) <= set(a.tolist())  # farthest-point selection picks the outliers
    assert torch.equal(greedy_coreset(x, 400, seed=0, show_progress=False), torch.arange(305))


def test_backbone_weights_options(tmp_path):
    m = build_backbone("mobilenet_v2", "none")
    path = tmp_path / "w.pth"
    torch.save({"state_dict": m.state_dict()}, path)
    m2 = build_backbone("mobilenet_v2", str(path))
    assert torch.equal(m.features[0][0].weight, m2.features[0][0].weight)
    with pytest.raises(WeightsError, match="weights file not found"):
        build_backbone("mobilenet_v2", str(tmp_path / "missing.pth"))
    torch.save(build_backbone("resnet18", "none").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="does not fit the backbone"):
        build_backbone("mobilenet_v2", str(tmp_path / "r18.pth"))


def test_offline_imagenet_weights_error_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsError) as info:
        build_backbone("wide_resnet50_2", "imagenet")
    msg = str(info.value)
    assert "wide_resnet50_2-95faca4d.pth" in msg and "method.backbone.weights=none" in msg and "TORCH_HOME" in msg


@pytest.mark.parametrize("category", REAL_CATEGORIES)
def test_real_category_beats_the_baselines(category, shared_torch_home, tmp_path):
    """Real MVTec AD, ``preset=cpu`` (ImageNet MobileNetV2) with a 2 % coreset to keep the test to minutes: image
    and pixel AUROC close at least half of the gap between the better reference baseline and 1, and AUPRO is
    above the baselines' by 0.1 (bottle: baselines 0.987 / 0.917 -> at least 0.993 / 0.958)."""
    root = real_category_root(category)
    cfg = compose_cfg(["method=patchcore", "preset=cpu", f"category={category}", f"dataset.root={root}",
                       "method.coreset.ratio=0.02", f"results_dir={tmp_path}", "progress=false"])
    m = run(cfg)["metrics"]
    for metric in ("image_auroc", "pixel_auroc"):
        base = best_baseline(category, metric)
        assert m[metric] >= base + 0.5 * (1 - base), (metric, m[metric], base)
    assert m["aupro"] >= best_baseline(category, "aupro") + 0.1, m


def test_feature_cache_extracts_once_same_numbers(tmp_path, small_synthetic_root):
    from .conftest import small_synthetic_overrides

    base = ["preset=tiny", f"results_dir={tmp_path / 'r'}", f"feature_cache={tmp_path / 'cache'}",
            *small_synthetic_overrides(small_synthetic_root)]
    first = run(compose_cfg(base + ["method.coreset.ratio=0.05"]))
    entries = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(entries) == 2  # train and test embeddings
    stamps = [p.stat().st_mtime_ns for p in entries]
    second = run(compose_cfg(base + ["method.coreset.ratio=0.05"]))
    assert [p.stat().st_mtime_ns for p in entries] == stamps  # read, not rewritten
    assert second["metrics"] == first["metrics"]
    uncached = run(compose_cfg([o for o in base if not o.startswith("feature_cache")] + ["method.coreset.ratio=0.05"]))
    assert uncached["metrics"] == first["metrics"]
    run(compose_cfg(base + ["method.coreset.ratio=0.1"]))  # another ratio reuses the same features
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


# ---- coreset: the accelerated greedy returns exactly the plain loop's indices -------------------------------

def _both(x: np.ndarray, n_select: int, **kw) -> tuple[np.ndarray, np.ndarray, dict]:
    from methods.patchcore.coreset import select_coreset

    stats: dict = {}
    plain = select_coreset(x, n_select, show_progress=False, algorithm="plain", **kw)
    fast = select_coreset(x, n_select, show_progress=False, algorithm="accelerated", stats=stats, **kw)
    return plain, fast, stats


@pytest.mark.parametrize("kind", ["clusters", "noisy_clusters", "lowdim", "duplicates", "grid"])
def test_accelerated_coreset_equals_plain(kind):
    """Every case leaves dense mode: the indices agree although most distances were skipped."""
    rng = np.random.default_rng(7)
    n, d = 6000, 128
    if kind == "clusters":
        x = 3 * rng.standard_normal((40, d))[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, d))
    elif kind == "noisy_clusters":  # 100 centres, wide high-dimensional spread inside each
        x = 3 * rng.standard_normal((100, d))[rng.integers(0, 100, n)] + 0.5 * rng.standard_normal((n, d))
    elif kind == "lowdim":
        x = rng.standard_normal((n, 3)) @ rng.standard_normal((3, d))
    elif kind == "duplicates":  # exact ties in min_d (every row four times): first index wins in both
        x = np.repeat(rng.standard_normal((n // 4, 4)) @ rng.standard_normal((4, d)), 4, axis=0)
    else:  # small integer grid, 5 dims: many exactly equal distances
        x = rng.integers(0, 6, (n, 5)).astype(np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    plain, fast, stats = _both(x, 900, start_points=10, seed=3)
    assert stats["sparse_steps"] >= 700, stats  # pruning started at the first or second check (64 steps each)
    assert stats["distances"] < 0.2 * n * 900, stats
    assert np.array_equal(plain, fast)


def test_accelerated_coreset_stays_dense_without_structure():
    """High intrinsic dimension: the triangle inequality rules nothing out, so no sparse step is taken."""
    x = np.random.default_rng(7).standard_normal((6000, 128)).astype(np.float32)
    plain, fast, stats = _both(x, 300, start_points=10, seed=3)
    assert stats["sparse_steps"] == 0 and stats["distances"] == 6000 * 300, stats
    assert np.array_equal(plain, fast)


def test_accelerated_coreset_equals_plain_on_patch_features(small_synthetic_root):
    """Real-like features: PatchCore embeddings (random-init MobileNetV2) of synthetic images, projected."""
    from adbench.data.synthetic import SyntheticDataModule  # noqa: F401 - the root is already generated
    from PIL import Image

    paths = sorted((small_synthetic_root / "washer" / "train" / "good").glob("*.png"))[:8]
    imgs = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                        for p in paths])
    torch.manual_seed(0)
    net = build_backbone("mobilenet_v2", "none").eval()
    model = PatchFeatures(FeatureExtractor(net, ["features.6", "features.13"]), 256, 256)
    with torch.inference_mode():
        emb, _ = model(imgs)  # [8, 256, 256]
    feats = emb.reshape(-1, 256)
    from methods.patchcore.coreset import project

    bank = project(feats, 128, seed=0).numpy()
    n_select = len(bank) // 4  # 512: pruning starts at a check after 64 selections and then pays off
    plain, fast, stats = _both(bank, n_select)
    assert stats["sparse_steps"] >= n_select // 2 and stats["distances"] < 0.5 * len(bank) * n_select, stats
    assert np.array_equal(plain, fast)
    idx = greedy_coreset(feats, n_select, projection_dim=128, show_progress=False)  # default: accelerated
    assert np.array_equal(idx.numpy(), plain)


@pytest.mark.parametrize("d", [3, 8, 17, 128])
def test_distance_kernel_rows_independent_of_call(d):
    """The premise of the exactness: a row's computed distance does not depend on which rows share the call."""
    from methods.patchcore.coreset import _FAISS_SPECIAL_D, _L2Kernel

    rng = np.random.default_rng(d)
    bank = (3 * rng.standard_normal((3000, d)) + 1).astype(np.float32)
    if d in _FAISS_SPECIAL_D:
        bank = np.ascontiguousarray(np.pad(bank, ((0, 0), (0, 1))))
    kern = _L2Kernel(bank.shape[1], threads=2)
    kern.set_centre(bank[11])
    full = kern(np.empty(len(bank), dtype=np.float32), bank).copy()
    for m in (1, 3, 5, 17, 250, 2999):
        ids = rng.integers(0, len(bank), m)
        part = kern(np.empty(m, dtype=np.float32), np.ascontiguousarray(bank[ids]))
        assert np.array_equal(part, full[ids])
    kern.close()


def test_coreset_algorithm_option_errors():
    x = torch.randn(50, 8)
    with pytest.raises(ValueError, match="coreset algorithm"):
        greedy_coreset(x, 5, algorithm="fastest", show_progress=False)


def test_patchcore_options_stream_dtype_algorithm(small_synthetic_root):
    """Streamed fit: plain and accelerated coresets keep the same memory bank; a float16 bank scores alike;
    bad option values name the option."""
    from omegaconf import open_dict

    from adbench.api import RunContext
    from adbench.data.errors import ConfigError
    from adbench.data.synthetic import SyntheticDataModule
    from methods.patchcore.method import PatchCore

    dm = SyntheticDataModule(root=small_synthetic_root, category="washer", image_size=64, crop_size=None,
                             batch_size=8, num_workers=0, n_train=12, n_test_good=6, n_per_defect=3,
                             synth_size=128).setup()
    # 12 images x 64 patches, half kept: 384 selections, so the accelerated coreset gets past its first checks
    cfg = compose_cfg(["preset=tiny", "method.coreset.ratio=0.5"]).method

    def make(**opts):
        c = cfg.copy()
        with open_dict(c):
            for k, v in opts.items():
                if k == "algorithm":
                    c.coreset.algorithm = v
                else:
                    c[k] = v
        torch.manual_seed(0)  # the same random-init backbone for every variant
        return PatchCore(c, RunContext(progress=False))

    models = {name: make(**opts) for name, opts in {"plain": {"algorithm": "plain"}, "fast": {"algorithm": "accelerated"},
                                                     "half": {"bank_dtype": "float16"},
                                                     "disk": {"bank_storage": "disk"}}.items()}
    for m in models.values():
        m.fit(dm.train_dataloader())
    assert torch.equal(models["plain"].bank, models["fast"].bank)
    assert torch.equal(models["disk"].bank, models["fast"].bank)  # features on disk: the same memory bank
    assert models["fast"].timings["backbone_s"] > 0 and models["fast"].coreset_stats["algorithm"] == "accelerated"
    assert models["fast"].coreset_stats["sparse_steps"] > 0, models["fast"].coreset_stats  # it really pruned
    assert len(models["fast"].bank) == int(768 * 0.5)
    s32 = models["fast"].predict(dm.test_dataloader()).image_scores
    s16 = models["half"].predict(dm.test_dataloader()).image_scores
    assert np.allclose(s16, s32, rtol=0.02, atol=0.02)
    with pytest.raises(ConfigError, match="method.coreset.algorithm"):
        make(algorithm="fastest")
    with pytest.raises(ConfigError, match="method.bank_dtype"):
        make(bank_dtype="int8")
    with pytest.raises(ConfigError, match="method.bank_storage"):
        make(bank_storage="cloud")


def test_bench_table_and_bandwidth(capsys):
    from adbench.bench import measure_bandwidth, print_tables

    assert measure_bandwidth(gib=0.05, repeats=2) > 0.1
    run_row = {"label": "ours x", "n_train": 10, "n_patches": 100, "extract_s": 1.0, "images_per_s": 10.0,
               "backbone_s": 0.5, "coreset_s": 0.2, "selections_per_s": 50.0, "index_s": 0.01, "search_s": 0.3,
               "postprocess_s": 0.1, "evaluate_s": 0.1, "total_s": 2.0, "peak_rss_mb": 900.0,
               "metrics": {"image_auroc": 1.0, "pixel_auroc": 0.9, "aupro": 0.8}}
    coreset = {"n_points": 100, "dim": 128, "bank_mb": 0.05, "n_select": 10, "plain_ms_per_selection": 1.0,
               "bound_ms_per_selection": 0.5, "bandwidth_gb_s": 20.0, "plain_projected_full_s": 0.01,
               "accelerated_ms_per_selection": 0.2, "accelerated_s": 0.002, "accelerated_full_passes": 3.0,
               "same_prefix": True}
    print_tables({"machine": {"cpus": 2, "threads": 2, "bandwidth_gb_s": 20.0}, "runs": [run_row], "coreset": coreset})
    out = capsys.readouterr().out
    assert "ours x" in out and "bandwidth bound 0.50 ms/selection" in out and "2.00x" in out
