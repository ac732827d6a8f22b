"""CutPaste preset=cpu (ImageNet MobileNetV2) on real MVTec AD categories: it must beat both reference baselines
(mean_image, pixel_gaussian, same image transform) in image and pixel AUROC, within its CPU training budget."""

from __future__ import annotations

import pytest

from adbench.run import run

from .conftest import best_baseline, compose_cfg, real_category_root

MARGIN = 0.01  # AUROC points over the better baseline


@pytest.mark.slow
@pytest.mark.parametrize("category", ["bottle", "transistor"])
def test_cutpaste_3way_cpu_beats_both_baselines(category, shared_torch_home, tmp_path):
    root = real_category_root(category)
    cfg = compose_cfg(["method=cutpaste", "preset=cpu", "method.variant=3way", f"category={category}",
                       f"dataset.root={root}", f"results_dir={tmp_path}", "progress=false"])
    record = run(cfg)
    m, t = record["metrics"], record["method_timings"]
    for metric in ("image_auroc", "pixel_auroc"):
        floor = best_baseline(category, metric) + MARGIN
        assert m[metric] >= floor, (metric, m[metric], floor)
    assert t["train_s"] + t["patch_train_s"] <= 15 * 60, t  # ~4 min on an idle 2-core CPU; slack for shared CPUs
