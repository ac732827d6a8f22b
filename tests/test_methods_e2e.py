"""Every registered method runs end to end on a small synthetic category, saves and reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adbench.api import Prediction, RunContext
from adbench.registry import get_method, list_methods
from adbench.run import build_datamodule, run

from .conftest import compose_cfg, small_synthetic_overrides

from .conftest import REPO


@pytest.mark.parametrize("name", list_methods())
def test_method_end_to_end_and_reload(name, small_synthetic_root, tmp_path):
    presets = REPO / "conf" / "method_preset"
    if (presets / f"{name}_cpu.yaml").is_file():  # a method with size profiles needs a seconds-long smoke one
        assert (presets / f"{name}_tiny.yaml").is_file(), f"method {name!r} needs {presets / f'{name}_tiny.yaml'}"
    overrides = [f"method={name}", "preset=tiny", f"results_dir={tmp_path}", "save_model=true",
                 *small_synthetic_overrides(small_synthetic_root)]
    cfg = compose_cfg(overrides)
    record = run(cfg)
    m = record["metrics"]
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        assert m[key] is not None and 0.0 <= m[key] <= 1.0, key
    on_disk = json.loads(open(record["path"]).read())
    assert on_disk["metrics"] == m and on_disk["status"] == "ok"

    # reload the saved model and predict again: same scores without refitting
    dm = build_datamodule(cfg).setup()
    ckpt = tmp_path / "checkpoints" / record["path"].split("/runs/")[1].removesuffix(".json")
    loaded = get_method(name).load(ckpt, RunContext(seed=0, category=str(cfg.category), image_size=dm.out_size,
                                                     progress=False))
    pred = loaded.predict(dm.test_dataloader())
    assert isinstance(pred, Prediction)
    assert pred.anomaly_maps.shape == (len(dm.test_samples), *dm.out_size)
    labels, masks, types = dm.test_targets()
    from adbench.evaluate import compute_metrics

    again = compute_metrics(pred.image_scores, pred.anomaly_maps, labels, masks, types)
    assert np.isclose(again["image_auroc"], m["image_auroc"], atol=1e-6)
    assert np.isclose(again["pixel_auroc"], m["pixel_auroc"], atol=1e-5)
