"""Same seed, same machine -> the same metrics (to 1e-6) for every registered method on CPU (preset=tiny);
the seed and the library versions are in every record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adbench.registry import list_methods
from adbench.run import run

from .conftest import compose_cfg, small_synthetic_overrides


@pytest.mark.parametrize("name", list_methods())
def test_same_seed_same_metrics_and_checkpoint_predicts_alike(name, small_synthetic_root, tmp_path):
    def once(results: str, *extra: str) -> dict:
        return run(compose_cfg([f"method={name}", "preset=tiny", "device=cpu", "seed=3", "calibration.holdout=0.2",
                                f"results_dir={tmp_path / results}", *small_synthetic_overrides(small_synthetic_root),
                                *extra]))

    a, b = once("a", "save_model=true"), once("b")  # separate results folders: nothing reused between the runs
    assert a["metrics"].keys() == b["metrics"].keys()
    for k, v in a["metrics"].items():
        assert v is not None and abs(v - b["metrics"][k]) <= 1e-6, (k, v, b["metrics"][k])
    if "per_image" in a:
        assert np.allclose(a["per_image"]["score"], b["per_image"]["score"], rtol=1e-6, atol=1e-9)
    assert a["calibration"]["threshold"] == pytest.approx(b["calibration"]["threshold"], rel=1e-6, abs=1e-9)
    rec = json.loads(open(a["path"]).read())  # what is on disk
    assert rec["config"]["seed"] == 3 and rec["device"] == "cpu"
    for lib in ("python", "torch", "torchvision", "numpy", "scikit-learn", "pillow"):
        assert rec["versions"].get(lib), lib
    assert rec["git_commit"] is None or len(rec["git_commit"]) >= 40

    # the checkpoint loads through the registry (method name from its manifest) and predicts the same scores
    from adbench.predict import load

    det = load(a["checkpoint"], device="cpu")
    assert det.method_name == name and det.threshold == a["calibration"]["threshold"]
    results = det.predict(small_synthetic_root / "washer" / "test")
    by_path = {r.path: r.score for r in results}
    assert len(by_path) == a["n_test"]
    if "per_image" in a:
        paths = [str(small_synthetic_root / "washer" / "test" / f) for f in a["per_image"]["file"]]
        assert np.allclose([by_path[p] for p in paths], a["per_image"]["score"], rtol=1e-5, atol=1e-7)
