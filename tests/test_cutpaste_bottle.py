"""CutPaste on the real MVTec AD bottle (preset=cpu, ImageNet MobileNetV2): the issue's acceptance run."""

from __future__ import annotations

import pytest

from adbench.run import run

from .conftest import compose_cfg


@pytest.mark.slow
def test_cutpaste_3way_bottle_cpu_reaches_095_image_auroc(mvtec_bottle, shared_torch_home, tmp_path):
    cfg = compose_cfg(["method=cutpaste", "preset=cpu", "method.variant=3way", "category=bottle",
                       f"dataset.root={mvtec_bottle}", "method.backbone.name=mobilenet_v2",
                       f"results_dir={tmp_path}", "progress=false"])
    record = run(cfg)
    t = record["method_timings"]
    assert t["train_s"] + t["patch_train_s"] <= 20 * 60, t
    assert record["metrics"]["image_auroc"] >= 0.95, record["metrics"]
    assert record["metrics"]["pixel_auroc"] > 0.8, record["metrics"]
