"""Training logs into run records and TensorBoard; the evaluator's down-sampled ROC / PRO curves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adbench.data.errors import ConfigError
from adbench.evaluate import aupro, metric_curves
from adbench.trainlog import check_logger, downsample, record_log, write_tensorboard

from .conftest import compose_cfg, small_synthetic_overrides


def _read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_downsample_keeps_short_stages_and_averages_long_ones():
    log = [{"stage": "image", "step": i, "loss": float(i), "acc": 1.0} for i in range(1, 1001)]
    log += [{"stage": "patch", "step": i, "loss": 2.0} for i in range(50)]
    out = downsample(log, max_points=100)
    image = [e for e in out if e["stage"] == "image"]
    assert len(image) == 100 and len([e for e in out if e["stage"] == "patch"]) == 50
    assert image[0] == {"stage": "image", "step": 10, "loss": 5.5, "acc": 1.0}  # mean of steps 1..10
    assert image[-1]["step"] == 1000 and image[-1]["loss"] == pytest.approx(995.5)


def test_record_log_cleans_nan_and_reads_nothing_from_methods_without_a_log():
    class M:
        train_log = [{"stage": "train", "step": 0, "loss": float("nan"), "lr": 0.1},
                     {"stage": "train", "step": 1, "loss": np.float32(0.5)}]

    assert record_log(M()) == [{"stage": "train", "step": 0, "loss": None, "lr": 0.1},
                               {"stage": "train", "step": 1, "loss": 0.5}]
    assert record_log(object()) is None
    json.dumps(record_log(M()), allow_nan=False)  # a record with it can be written


def test_check_logger():
    assert check_logger("none") == "none" and check_logger(None) == "none"
    assert check_logger("TensorBoard") == "tensorboard"
    with pytest.raises(ConfigError, match="logger='wandb' is not known; choose one of: none, tensorboard"):
        check_logger("wandb")


def _brute_pro(maps, masks, t):
    from scipy import ndimage

    overlaps = []
    for a, m in zip(maps, masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        overlaps += [float((a[lab == c] > t).mean()) for c in range(1, n + 1)]
    return float(np.mean(overlaps)), float((maps[~masks] > t).mean()), float((maps[masks] > t).mean())


def test_metric_curves_match_brute_force_and_aupro():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 32, 32), dtype=bool)
    masks[1, 4:10, 4:12] = True
    masks[2, 20:30, 3:6] = True
    masks[2, 2:4, 25:30] = True
    masks[4, 10:22, 10:22] = True
    maps = rng.normal(size=masks.shape).astype(np.float32) + 1.5 * masks
    c = metric_curves(maps, masks, n_points=401)
    neg = np.sort(maps[~masks])
    thresholds = lambda fprs: neg[np.clip(np.ceil((1 - fprs) * neg.size).astype(int) - 1, 0, neg.size - 1)]  # noqa: E731
    for t, f, p in zip(thresholds(np.linspace(0, 0.3, 401)), c["pro"]["fpr"][1:], c["pro"]["pro"][1:]):
        pro, fpr, _ = _brute_pro(maps, masks, t)
        assert p == pytest.approx(pro, abs=1e-4) and f == pytest.approx(fpr, abs=1e-4)
    roc_grid = np.unique(np.concatenate([np.linspace(0, 1, 401), np.geomspace(1e-4, 0.05, 15)]))
    for t, f, tp in zip(thresholds(roc_grid), c["pixel_roc"]["fpr"][1:-1], c["pixel_roc"]["tpr"][1:-1]):
        _, fpr, tpr = _brute_pro(maps, masks, t)
        assert tp == pytest.approx(tpr, abs=1e-4) and f == pytest.approx(fpr, abs=1e-4)
    assert c["pro"]["fpr"][-1] == pytest.approx(0.3, abs=1e-3)
    area = np.trapezoid(c["pro"]["pro"], c["pro"]["fpr"]) / 0.3
    assert area == pytest.approx(aupro(maps, masks), abs=0.01)
    assert metric_curves(maps, np.zeros_like(masks)) == {}


def test_tensorboard_event_file_reads_back(tmp_path):
    log = [{"stage": "image", "step": s, "loss": 1.0 / (s + 1), "acc": 0.5, "lr": 0.03} for s in range(5)]
    log += [{"stage": "patch", "step": s, "loss": 2.0, "val_ratio": 0.9} for s in range(3)]
    cfg = {"method": {"name": "cutpaste", "lr": 0.03, "head_dims": [512, 128]}, "seed": 1, "category": "bottle",
           "dataset": {"crop_size": None}}
    out = write_tensorboard(tmp_path / "tb" / "run", log, {"image_auroc": 0.9, "aupro": None}, cfg)
    acc = _read_events(out)
    tags = acc.Tags()["scalars"]
    assert {"image/loss", "image/acc", "image/lr", "patch/loss", "patch/val_ratio", "metrics/image_auroc"} <= set(tags)
    assert [e.step for e in acc.Scalars("image/loss")] == [0, 1, 2, 3, 4]
    assert acc.Scalars("image/loss")[2].value == pytest.approx(1 / 3)
    assert acc.Scalars("metrics/image_auroc")[0].value == pytest.approx(0.9)
    from tensorboard.plugins.hparams import plugin_data_pb2

    plugin = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["method.lr"].number_value == pytest.approx(0.03)
    assert session.hparams["method.name"].string_value == "cutpaste"
    assert session.hparams["method.head_dims"].string_value == "[512, 128]"
    # written again: replaced, not a second event file beside the first
    write_tensorboard(out, log[:2], {"image_auroc": 0.8}, cfg)
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert len(_read_events(out).Scalars("image/loss")) == 2


def test_run_with_tensorboard_logger_writes_events_and_curves(tmp_path, small_synthetic_root):
    from adbench.run import run

    rec = run(compose_cfg(["method=pixel_gaussian", "logger=tensorboard", f"results_dir={tmp_path}",
                           *small_synthetic_overrides(small_synthetic_root)]))
    tb = tmp_path / "tensorboard" / "pixel_gaussian" / "synthetic" / "washer"
    assert rec["tensorboard"] and str(tb) in rec["tensorboard"]
    acc = _read_events(rec["tensorboard"])
    assert acc.Scalars("metrics/pixel_auroc")[0].value == pytest.approx(rec["metrics"]["pixel_auroc"], abs=1e-6)
    assert rec["train_log"] is None  # a baseline does not train
    pro = rec["curves"]["pro"]
    assert len(pro["fpr"]) == len(pro["pro"]) > 10 and pro["fpr"][-1] == pytest.approx(0.3, abs=0.01)
    area = np.trapezoid(pro["pro"], pro["fpr"]) / 0.3
    assert area == pytest.approx(rec["metrics"]["aupro"], abs=0.02)
    with pytest.raises(ConfigError, match="logger='csv'"):
        run(compose_cfg(["method=pixel_gaussian", "logger=csv", f"results_dir={tmp_path}",
                         *small_synthetic_overrides(small_synthetic_root)]))
