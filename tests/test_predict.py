"""Prediction from a saved PatchCore checkpoint: CLI outputs, Python API inputs, calibrated threshold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adbench.calibration import Calibration, split_holdout
from adbench.data.mvtec import Sample
from adbench.predict import Result, load, main
from adbench.run import build_datamodule, run

from .conftest import compose_cfg, small_synthetic_overrides


@pytest.fixture(scope="session")
def patchcore_checkpoint(small_synthetic_root, tmp_path_factory) -> tuple[Path, dict]:
    """A tiny PatchCore fitted on the small synthetic washer, 25 % of the train images held out to calibrate."""
    results = tmp_path_factory.mktemp("predict_results")
    cfg = compose_cfg(["preset=tiny", f"results_dir={results}", "save_model=true", "calibration.holdout=0.25",
                       *small_synthetic_overrides(small_synthetic_root)])
    record = run(cfg)
    return Path(record["checkpoint"]), record


def test_checkpoint_folder_is_self_contained(patchcore_checkpoint):
    ckpt, record = patchcore_checkpoint
    names = {p.name for p in ckpt.iterdir()}
    assert {"adbench_checkpoint.json", "config.yaml", "calibration.json", "patchcore.pt", "index.faiss"} <= names
    manifest = json.loads((ckpt / "adbench_checkpoint.json").read_text())
    assert manifest["method"] == "patchcore" and manifest["out_size"] == [128, 128] and manifest["calibrated"]
    cal = Calibration.load(ckpt)
    # 12 train images, 25 % held out: 3 calibration images, 9 used for fitting
    assert cal.n_images == 3 and record["n_train"] == 9 and record["n_calibration"] == 3
    assert cal.threshold == pytest.approx(float(np.quantile(cal.scores, 0.99)))
    assert record["calibration"]["threshold"] == cal.threshold
    assert 0 <= record["calibration"]["test_fpr"] <= 1 and 0 <= record["calibration"]["test_tpr"] <= 1


def test_holdout_is_disjoint_from_training_and_seeded():
    samples = [Sample(Path(f"{i:03d}.png"), 0, "good") for i in range(20)]
    train, held = split_holdout(samples, 0.1, seed=0)
    assert len(held) == 2 and len(train) == 18 and not set(train) & set(held)
    assert split_holdout(samples, 0.1, seed=0) == (train, held)
    assert split_holdout(samples, 0.1, seed=1)[1] != held
    assert split_holdout(samples, 0.0, seed=0) == (samples, [])


def test_cli_writes_scores_maps_overlays_decisions(patchcore_checkpoint, small_synthetic_root, tmp_path, capsys):
    ckpt, record = patchcore_checkpoint
    test_dir = small_synthetic_root / "washer" / "test"
    out = tmp_path / "pred"
    assert main([f"checkpoint={ckpt}", f"input={test_dir}", f"output={out}", "device=cpu", "progress=false"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 6 + 3 * 3
    thr = Calibration.load(ckpt).threshold
    for row in rows:
        m = np.load(out / row["map"])
        assert m.shape == (128, 128) and m.dtype == np.float32 and np.isfinite(m).all()
        w, h = Image.open(out / row["overlay"]).size  # the map's 128 x 128, then the colour bar below
        assert w == 128 and h > 128
        assert row["decision"] == ("anomalous" if float(row["score"]) > thr else "normal")
    assert (out / "scratch" / "000.png.npy").is_file()  # the input folder's structure is mirrored
    # the same images scored by the run: identical scores (same model, same transform)
    scores = {r["path"]: float(r["score"]) for r in rows}
    dm = build_datamodule(compose_cfg(["preset=tiny", *small_synthetic_overrides(small_synthetic_root)])).setup()
    per_run = record["per_image"]["score"]
    for s, expected in zip(dm.test_samples, per_run):
        assert scores[str(s.path)] == pytest.approx(expected, rel=1e-5)
    meta = json.loads((out / "predictions.json").read_text())
    assert meta["threshold_source"] == "calibration" and meta["method"] == "patchcore"
    stdout = capsys.readouterr().out
    assert "15 image(s)" in stdout and f"{thr:.6g}" in stdout


def test_cli_single_file_and_threshold_option(patchcore_checkpoint, small_synthetic_root, tmp_path):
    ckpt, _ = patchcore_checkpoint
    img = small_synthetic_root / "washer" / "test" / "good" / "000.png"
    assert main([f"checkpoint={ckpt}", f"input={img}", f"output={tmp_path}", "threshold=-1", "progress=false"]) == 0
    row = next(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert row["decision"] == "anomalous" and float(row["threshold"]) == -1.0  # every score exceeds -1
    assert (tmp_path / "000.png.npy").is_file() and (tmp_path / "000.png_overlay.png").is_file()


def test_python_api_path_pil_tensor_agree(patchcore_checkpoint, small_synthetic_root):
    ckpt, _ = patchcore_checkpoint
    det = load(ckpt, device="cpu")
    img_path = small_synthetic_root / "washer" / "test" / "spot" / "001.png"
    r_path = det.predict(img_path)
    assert isinstance(r_path, Result) and r_path.path == str(img_path)
    assert r_path.anomaly_map.shape == (128, 128) and r_path.image.shape == (128, 128, 3)
    assert r_path.anomalous == (r_path.score > det.threshold)
    pil = Image.open(img_path)
    r_pil = det.predict(pil)
    x = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).float() / 255  # [3, H, W] in [0, 1]
    r_t = det.predict(x)
    batch = det.predict(torch.stack([x, x]))  # [B, 3, H, W] -> a list
    assert r_pil.score == pytest.approx(r_path.score, rel=1e-6)
    assert r_t.score == pytest.approx(r_path.score, rel=1e-6)
    assert np.allclose(r_t.anomaly_map, r_path.anomaly_map, rtol=1e-5, atol=1e-7)
    assert isinstance(batch, list) and len(batch) == 2 and batch[1].score == pytest.approx(r_path.score, rel=1e-6)
    folder = det.predict(img_path.parent)
    assert len(folder) == 3 and folder[1].score == pytest.approx(r_path.score, rel=1e-6)
    overlay = det.overlay(r_path)
    assert overlay.size[0] == 128 and overlay.size[1] > 128 and overlay.mode == "RGB"  # + the colour bar


def test_grayscale_input_to_rgb_model(patchcore_checkpoint, tmp_path):
    ckpt, _ = patchcore_checkpoint
    det = load(ckpt, device="cpu")
    gray = Image.fromarray((np.random.default_rng(0).random((90, 70)) * 255).astype(np.uint8))  # "L", other size
    gray.save(tmp_path / "g.png")
    r = det.predict(tmp_path / "g.png")
    assert r.anomaly_map.shape == (128, 128) and np.isfinite(r.score)


def test_uncalibrated_checkpoint_gives_unknown_decision(patchcore_checkpoint, tmp_path, capsys):
    import shutil

    ckpt, _ = patchcore_checkpoint
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    (copy / "calibration.json").unlink()
    det = load(copy, device="cpu")
    assert det.threshold is None and det.calibration is None
    x = torch.rand(3, 64, 64)
    r = det.predict(x)
    assert r.anomalous is None and r.decision == "unknown"
    out = tmp_path / "o"
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(inp / "a.png")
    assert main([f"checkpoint={copy}", f"input={inp}", f"output={out}", "progress=false"]) == 0
    assert "no threshold" in capsys.readouterr().err
    assert next(csv.DictReader(open(out / "predictions.csv")))["decision"] == "unknown"
