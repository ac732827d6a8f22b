"""VAE-energy on the real MVTec AD bottle (preset=cpu): the issue's acceptance run."""

from __future__ import annotations

import pytest

from adbench.run import run

from .conftest import compose_cfg


@pytest.mark.slow
def test_vae_energy_bottle_cpu_projection_beats_reconstruction(mvtec_bottle, tmp_path):
    cfg = compose_cfg(["method=vae_energy", "preset=cpu", "category=bottle", f"dataset.root={mvtec_bottle}",
                       f"results_dir={tmp_path}", "progress=false"])
    record = run(cfg)
    assert record["method_timings"]["train_s"] <= 20 * 60, record["method_timings"]
    projected = record["metrics"]["pixel_auroc"]
    plain = record["extra_metrics"]["reconstruction"]["pixel_auroc"]
    assert projected >= 0.80, record["metrics"]
    assert projected > plain, (projected, plain)
