"""A saved model makes decisions (issue 20, case 13): ``save_model=true`` with ``calibration.holdout=0`` (the
benchmark datasets' default) is calibrated after the test metrics by a second fit that holds out 10 % of the
training images (the saved model and the metrics are the paper protocol's); ``predict`` says "no threshold: scores
only" when a checkpoint has none; overlays use one fixed scale per checkpoint, printed in the image."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adbench.calibration import Calibration
from adbench.predict import load, main
from adbench.run import run

from .conftest import compose_cfg, small_synthetic_overrides


@pytest.fixture(scope="module")
def default_saved(small_synthetic_root, tmp_path_factory) -> tuple[Path, dict, list[str], str]:
    """Tiny PatchCore on the small synthetic washer, saved with the dataset's default calibration.holdout (0);
    with what the run printed."""
    results = tmp_path_factory.mktemp("saved_default")
    overrides = ["preset=tiny", *small_synthetic_overrides(small_synthetic_root)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        record = run(compose_cfg([f"results_dir={results}", "save_model=true", *overrides]))
    return Path(record["checkpoint"]), record, overrides, printed.getvalue()


def test_saved_model_is_calibrated_on_held_out_images_and_metrics_are_untouched(default_saved, tmp_path):
    ckpt, record, overrides, printed = default_saved
    cal = Calibration.load(ckpt)
    assert cal is not None and cal.source == "proxy" and not cal.in_sample and cal.holdout == 0.1
    assert record["n_train"] == 12 and record["n_calibration"] == 0  # the saved model is fitted on every image
    assert cal.n_images == 1  # 10 % of 12, held out from the second fit
    assert cal.threshold == pytest.approx(float(np.quantile(cal.scores, 0.99)))
    assert record["calibration"]["source"] == "proxy" and record["calibration"]["threshold"] == cal.threshold
    assert "(quantile 0.99 of 1 normal training images held out from a second fit on the others; the saved model " \
           "was fitted on all of them): on the test images FPR" in printed
    plain = run(compose_cfg([f"results_dir={tmp_path}", *overrides]))  # the paper protocol, nothing saved
    assert plain["calibration"] is None and plain["metrics"] == record["metrics"]
    assert plain["per_image"]["score"] == record["per_image"]["score"]
    # the second fit is the model calibration.holdout=0.1 would have fitted, with the same threshold
    held = run(compose_cfg([f"results_dir={tmp_path / 'held'}", "calibration.holdout=0.1", *overrides]))
    assert held["n_train"] == 11 and held["calibration"]["threshold"] == pytest.approx(cal.threshold, rel=1e-6)


def test_predict_with_a_default_saved_model_gives_decisions(default_saved, small_synthetic_root, tmp_path, capsys):
    ckpt = default_saved[0]
    out = tmp_path / "out"
    assert main([f"checkpoint={ckpt}", f"input={small_synthetic_root / 'washer' / 'test'}", f"output={out}",
                 "progress=false"]) == 0
    stdout = capsys.readouterr().out
    thr = Calibration.load(ckpt).threshold
    assert f"(threshold {thr:.6g}: quantile 0.99 of 1 normal training images held out from a second fit" in stdout
    assert {r["decision"] for r in csv.DictReader(open(out / "predictions.csv"))} <= {"normal", "anomalous"}


def _uncalibrated(ckpt: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "uncalibrated"
    shutil.copytree(ckpt, copy)
    (copy / "calibration.json").unlink(missing_ok=True)  # allowed: calibration.json is not hashed
    return copy


def _heat(overlay: Path, image: np.ndarray) -> float:
    """Mean colour change the overlay made to the image (0: the image itself)."""
    a = np.asarray(Image.open(overlay).convert("RGB"), dtype=np.float64)[: image.shape[0]]
    return float(np.abs(a - image).mean())


def test_without_a_threshold_predict_says_scores_only_and_overlays_share_one_scale(default_saved, small_synthetic_root,
                                                                                   tmp_path, capsys):
    ckpt = _uncalibrated(default_saved[0], tmp_path)
    test = small_synthetic_root / "washer" / "test"
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for kind in ("good", "scratch"):
        for f in sorted((test / kind).glob("*.png")):
            shutil.copy(f, inp / f"{kind}_{f.name}")
    assert main([f"checkpoint={ckpt}", f"input={inp}", f"output={out}", "progress=false"]) == 0
    captured = capsys.readouterr()
    assert "no threshold: scores only" in captured.out and "None" not in captured.out
    assert "holds no calibrated threshold; pass threshold=X" in captured.err
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert {r["decision"] for r in rows} == {"unknown"}
    meta = json.loads((out / "predictions.json").read_text())
    scale = meta["overlay_scale"]
    maps = [np.load(out / r["map"]) for r in rows]
    assert scale["source"].startswith("this run's maps")
    assert scale["low"] == pytest.approx(float(np.median([np.median(m) for m in maps])))
    assert scale["high"] == pytest.approx(max(float(m.max()) for m in maps))
    for r in rows:  # one scale, printed in every overlay (PNG text) and drawn below it
        png = Image.open(out / r["overlay"])
        assert json.loads(png.text["adbench_scale"]) == scale and png.size[1] > 128
    # the lowest-scored good image is drawn cooler than the highest-scored defective one (one scale, not each
    # map stretched to its own maximum)
    det = load(ckpt, device="cpu")
    good = min((r for r in rows if "good_" in r["path"]), key=lambda r: float(r["score"]))
    bad = max((r for r in rows if "scratch_" in r["path"]), key=lambda r: float(r["score"]))
    assert _heat(out / good["overlay"], det.predict(good["path"]).image) < \
        0.5 * _heat(out / bad["overlay"], det.predict(bad["path"]).image)


def test_calibrated_overlays_use_the_calibration_scale(default_saved, small_synthetic_root, tmp_path):
    ckpt = default_saved[0]
    cal = Calibration.load(ckpt)
    out = tmp_path / "out"
    assert main([f"checkpoint={ckpt}", f"input={small_synthetic_root / 'washer' / 'test' / 'spot'}", f"output={out}",
                 "progress=false"]) == 0
    expected = {"low": cal.map_low, "high": cal.map_high, "source": "calibration"}
    assert json.loads((out / "predictions.json").read_text())["overlay_scale"] == expected
    for r in csv.DictReader(open(out / "predictions.csv")):
        assert json.loads(Image.open(out / r["overlay"]).text["adbench_scale"]) == expected
