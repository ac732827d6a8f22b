"""VAE-energy preset=cpu on real MVTec AD bottle and transistor, against the raw-pixel baselines at the same input."""

from __future__ import annotations

import pytest

from adbench.run import run

from .conftest import REAL_CATEGORIES, best_baseline, compose_cfg, real_category_root

MARGIN = 0.01  # "clearly beats": at least this much above the better baseline


@pytest.mark.slow
@pytest.mark.parametrize("category", REAL_CATEGORIES)
def test_vae_energy_cpu_against_the_baselines(category, tmp_path):
    cfg = compose_cfg(["method=vae_energy", "preset=cpu", f"category={category}",
                       f"dataset.root={real_category_root(category)}", f"results_dir={tmp_path}", "progress=false"])
    # the baselines see the same images as the method: the preset's dataset size, no crop
    data = (f"dataset.image_size={cfg.dataset.image_size}", f"dataset.crop_size={cfg.dataset.crop_size or 'null'}")
    record = run(cfg)
    assert record["method_timings"]["train_s"] <= 20 * 60, record["method_timings"]
    m = record["metrics"]
    for metric in ("pixel_auroc", "image_auroc"):
        assert m[metric] >= best_baseline(category, metric, data) + MARGIN, (metric, m, data)
