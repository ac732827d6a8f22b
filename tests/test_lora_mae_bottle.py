"""LoRA-MAE ``preset=cpu`` on real MVTec AD categories against the reference baselines at the same input size."""

from __future__ import annotations

import pytest

from adbench.run import run

from .conftest import best_baseline, compose_cfg, real_category_root

SAME_INPUT = ("dataset.image_size=72", "dataset.crop_size=64")  # the cpu preset's input (conf/method_preset/lora_mae_cpu.yaml)
MARGIN = 0.01
# measured (README, LoRA-MAE): on transistor the cpu preset beats both baselines at its input; on bottle it beats
# them in image AUROC (0.987 vs 0.971) but not in pixel AUROC (0.952 vs 0.956): held-out reconstruction is no
# better than the mean image there.
BEATS = {"transistor": True, "bottle": False}
GAP = 0.02  # how far below the baseline bottle may stay before the test calls it a regression


@pytest.mark.slow
@pytest.mark.parametrize("category", ["bottle", "transistor"])
def test_lora_mae_cpu_beats_the_baselines(category, tmp_path):
    root = real_category_root(category)
    cfg = compose_cfg(["method=lora_mae", "preset=cpu", f"category={category}", f"dataset.root={root}",
                       f"results_dir={tmp_path}", "progress=false"])
    assert (cfg.dataset.image_size, cfg.dataset.crop_size) == (72, 64), "keep SAME_INPUT in step with the preset"
    record = run(cfg)
    m = record["metrics"]
    for metric in ("pixel_auroc", "image_auroc"):
        floor = best_baseline(category, metric, SAME_INPUT)
        want = floor + MARGIN if BEATS[category] else floor - GAP
        assert m[metric] >= want, (category, metric, m[metric], floor)
    log = record.get("train_log") or []
    ratios = [e["val_ratio"] for e in log if e.get("val_ratio") is not None]
    # held-out reconstruction vs the mean training image: better on transistor, about equal on bottle
    assert ratios and ratios[-1] < (1.0 if BEATS[category] else 1.15), ratios
