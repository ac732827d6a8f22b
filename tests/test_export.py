"""ONNX export: each exportable method's graph scored by ONNX Runtime agrees with the torch model (1e-4 relative)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from adbench.export import main as export_main  # noqa: E402
from adbench.predict import load, main as predict_main  # noqa: E402
from adbench.run import run  # noqa: E402

from .conftest import compose_cfg, small_synthetic_overrides  # noqa: E402

RTOL = 1e-4


def _checkpoint(root: Path, results: Path, method: str, extra: tuple[str, ...] = ()) -> Path:
    cfg = compose_cfg([f"method={method}", "preset=tiny", f"results_dir={results}", "save_model=true",
                       "calibration.holdout=0.25", *small_synthetic_overrides(root), *extra])
    return Path(run(cfg)["checkpoint"])


def _close(ort: np.ndarray, ref: np.ndarray) -> float:
    """Max relative error, relative to the reference's largest magnitude (maps have near-zero pixels)."""
    return float(np.abs(ort - ref).max() / max(np.abs(ref).max(), 1e-12))


def _agreement(ckpt: Path, onnx_file: Path, images: Path) -> tuple[float, float]:
    torch_det = load(ckpt, device="cpu")
    ort_det = load(onnx_file, engine="onnxruntime")
    files = sorted(images.rglob("*.png"))[:6]
    ref = torch_det.predict(files)
    got = ort_det.predict(files)
    s_ref = np.array([r.score for r in ref])
    s_got = np.array([r.score for r in got])
    m_ref = np.stack([r.anomaly_map for r in ref])
    m_got = np.stack([r.anomaly_map for r in got])
    assert m_got.shape == m_ref.shape
    return float(np.max(np.abs(s_got - s_ref) / np.abs(s_ref))), _close(m_got, m_ref)


@pytest.fixture(scope="module")
def patchcore_onnx(small_synthetic_root, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("export_patchcore")
    ckpt = _checkpoint(small_synthetic_root, out / "results", "patchcore", ("method.num_nn=3",))
    onnx_file = out / "patchcore.onnx"
    assert export_main([f"checkpoint={ckpt}", "format=onnx", f"output={onnx_file}"]) == 0
    return ckpt, onnx_file


def test_patchcore_onnx_matches_torch(patchcore_onnx, small_synthetic_root):
    ckpt, onnx_file = patchcore_onnx
    score_err, map_err = _agreement(ckpt, onnx_file, small_synthetic_root / "washer" / "test")
    assert score_err < RTOL and map_err < RTOL, (score_err, map_err)


def test_onnx_metadata_carries_what_prediction_needs(patchcore_onnx):
    import onnx

    ckpt, onnx_file = patchcore_onnx
    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    cal = json.loads((ckpt / "calibration.json").read_text())
    assert meta["method"] == "patchcore" and json.loads(meta["input_size"]) == [128, 128]
    assert float(meta["threshold"]) == pytest.approx(cal["threshold"])
    assert json.loads(meta["normalisation"])["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["adbench_version"] and "exact" in meta["note"]


def test_predict_cli_onnxruntime_engine(patchcore_onnx, small_synthetic_root, tmp_path, capsys):
    ckpt, onnx_file = patchcore_onnx
    src = small_synthetic_root / "washer" / "test" / "good"
    assert predict_main([f"checkpoint={onnx_file}", "engine=onnxruntime", f"input={src}", f"output={tmp_path / 'o'}",
                         "progress=false"]) == 0
    assert predict_main([f"checkpoint={ckpt}", f"input={src}", f"output={tmp_path / 't'}", "device=cpu",
                         "progress=false"]) == 0
    rows_o = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    rows_t = list(csv.DictReader(open(tmp_path / "t" / "predictions.csv")))
    assert [r["decision"] for r in rows_o] == [r["decision"] for r in rows_t] and len(rows_o) == 6
    for a, b in zip(rows_o, rows_t):
        assert float(a["score"]) == pytest.approx(float(b["score"]), rel=RTOL)
    capsys.readouterr()
    assert predict_main([f"checkpoint={onnx_file}", "engine=tensorrt", f"input={src}", f"output={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "engine=tensorrt" in err[0] and "onnxruntime" in err[0]
    assert predict_main([f"checkpoint={ckpt}", "engine=onnxruntime", f"input={src}", f"output={tmp_path / 'y'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python -m adbench.export" in err[0]


def test_export_refuses_bad_format_and_unexportable_settings(patchcore_onnx, tmp_path, capsys):
    ckpt, _ = patchcore_onnx
    assert export_main([f"checkpoint={ckpt}", "format=tflite", f"output={tmp_path / 'x.tflite'}"]) == 2
    assert "format=onnx" in capsys.readouterr().err
    assert export_main([f"checkpoint={tmp_path / 'missing'}", f"output={tmp_path / 'x.onnx'}"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_gaussian_blur_module_matches_scipy():
    from scipy import ndimage

    from adbench.export import GaussianBlur

    m = torch.rand(2, 1, 20, 33)
    for sigma in (1.0, 4.0):
        got = GaussianBlur(sigma, (20, 33))(m)[:, 0].numpy()
        ref = np.stack([ndimage.gaussian_filter(x, sigma=sigma) for x in m[:, 0].numpy()])
        assert np.abs(got - ref).max() < 1e-6


@pytest.mark.parametrize("category,extra", [  # an object (whole image, standardised maps) and a texture (tiles)
    ("washer", ("method.standardize=true", "method.train.holdout=0.25")), ("weave", ())])
def test_vae_energy_reconstruction_onnx_matches_torch(small_synthetic_root, tmp_path, category, extra):
    ckpt = _checkpoint(small_synthetic_root, tmp_path / "results", "vae_energy",
                       ("method.score=reconstruction", f"category={category}", *extra))
    onnx_file = tmp_path / "vae.onnx"
    assert export_main([f"checkpoint={ckpt}", f"output={onnx_file}"]) == 0
    score_err, map_err = _agreement(ckpt, onnx_file, small_synthetic_root / category / "test")
    assert score_err < RTOL and map_err < RTOL, (score_err, map_err)


def test_vae_energy_projection_exports_reconstruction_without_threshold(small_synthetic_root, tmp_path):
    from adbench.checkpoint import load_checkpoint
    from adbench.export import export_module, metadata

    ckpt = _checkpoint(small_synthetic_root, tmp_path / "results", "vae_energy", ("method.score=reconstruction",))
    model, manifest, _, cal = load_checkpoint(ckpt)
    model.cfg.score = "projection"
    graph = export_module(model, "vae_energy")
    meta = metadata(manifest, cal, graph.export_note, graph.export_calibrated)
    assert cal is not None and meta["threshold"] == "null" and "not exportable" in meta["note"]


def test_resize_matrix_matches_antialiased_interpolate():
    from adbench.export import resize_matrix

    x = torch.rand(2, 3, 40, 56)
    ref = torch.nn.functional.interpolate(x, size=(16, 24), mode="bilinear", align_corners=False, antialias=True)
    got = resize_matrix(40, 16, True) @ x @ resize_matrix(56, 24, True).t()
    assert (got - ref).abs().max() < 1e-5



def test_cutpaste_onnx_matches_torch(small_synthetic_root, tmp_path):
    """Image score (image model + Gaussian) and the patch model's dense map within 1e-4 relative.

    The tiny profile's random-init MobileNetV2 embeds every image to the same vector up to ~2e-6 relative, so its Mahalanobis scores are float32 rounding noise in ``x - mean`` (ONNX Runtime 2e-2 from
    torch), whatever the density's arithmetic. A random-init ResNet-18 keeps the embeddings apart, which this test
    checks."""
    from adbench.export import export_module

    ckpt = _checkpoint(small_synthetic_root, tmp_path / "results", "cutpaste", ("method.backbone.name=resnet18",))
    onnx_file = tmp_path / "cutpaste.onnx"
    assert export_main([f"checkpoint={ckpt}", f"output={onnx_file}"]) == 0
    score_err, map_err = _agreement(ckpt, onnx_file, small_synthetic_root / "washer" / "test")
    assert score_err < RTOL and map_err < RTOL, (score_err, map_err)
    det = load(ckpt, device="cpu")
    files = sorted((small_synthetic_root / "washer" / "test").rglob("*.png"))
    emb = det.model._embed(det.model.image_net, torch.stack([det.load_file(f) for f in files])).double()
    spread = ((emb - det.model.image_density.mean).norm(dim=1) / emb.norm(dim=1)).min()
    assert spread > 1e-3, f"degenerate test model: embeddings {spread:.1e} (relative) from the mean"
    graph = export_module(det.model, "cutpaste")
    exact = det.model.image_density.score(emb.float())
    assert (graph.image_density(emb.float()) - exact).abs().max() <= 1e-6 * exact.abs().max()


def _pretrained_encoder(path: Path, embed_dim: int = 32, patch: int = 16, grid: int = 8) -> Path:
    """A timm-format one-block ViT encoder state dict (random), so LoRA-MAE builds LoRA layers on it."""
    import timm

    vit = timm.models.VisionTransformer(img_size=patch * grid, patch_size=patch, embed_dim=embed_dim, depth=1,
                                        num_heads=2, num_classes=0, global_pool="token")
    torch.save(vit.state_dict(), path)
    return path


@pytest.mark.parametrize("extra", [  # plain squared error; LoRA on a "pretrained" encoder with z-scored residuals
    (), ("method.inference.standardize=residual", "method.train.holdout=0.25", "method.inference.image_score=topk_mean")])
def test_lora_mae_onnx_matches_torch(small_synthetic_root, tmp_path, extra):
    from adbench.checkpoint import load_checkpoint

    if extra:
        extra += (f"method.pretrained={_pretrained_encoder(tmp_path / 'vit.pth')}", "method.lora.rank=4",
                  "method.lora.alpha=4", "method.train.blr=0.5")
    ckpt = _checkpoint(small_synthetic_root, tmp_path / "results", "lora_mae", extra)
    model = load_checkpoint(ckpt, "cpu")[0]
    if extra:  # the LoRA update is really there, so merging it is exercised
        qkv = model.model.blocks[0].attn.qkv
        assert model.use_lora and qkv.lora_B.abs().max() > 0
    onnx_file = tmp_path / "lora_mae.onnx"
    assert export_main([f"checkpoint={ckpt}", f"output={onnx_file}"]) == 0
    score_err, map_err = _agreement(ckpt, onnx_file, small_synthetic_root / "washer" / "test")
    assert score_err < RTOL and map_err < RTOL, (score_err, map_err)


def test_baselines_say_why_they_are_not_exportable():
    from adbench.export import NotExportable, export_module

    with pytest.raises(NotExportable, match="'mean_image' is not exportable because it registers no ONNX exporter"):
        export_module(None, "mean_image")
