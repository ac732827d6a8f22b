"""LoRA-MAE on the real MVTec AD bottle (preset=cpu, trained from scratch): the issue's acceptance run."""

from __future__ import annotations

import pytest

from adbench.run import run

from .conftest import compose_cfg


@pytest.mark.slow
def test_lora_mae_cpu_from_scratch_bottle_reaches_080_pixel_auroc(mvtec_bottle, tmp_path):
    cfg = compose_cfg(["method=lora_mae", "preset=cpu", "method.pretrained=none", "category=bottle",
                       f"dataset.root={mvtec_bottle}", f"results_dir={tmp_path}", "progress=false"])
    record = run(cfg)
    assert record["method_timings"]["train_s"] <= 30 * 60, record["method_timings"]
    assert record["metrics"]["pixel_auroc"] >= 0.80, record["metrics"]
