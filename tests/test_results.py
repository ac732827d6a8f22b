"""Run records and the table builder."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from adbench.results import build_table, config_hash, run_path, write_json_atomic


def _record(root, method, category, auroc, seed=0):
    cfg = {"method": {"name": method}, "dataset": {"name": "mvtec"}, "category": category, "seed": seed,
           "preset": {"name": "cpu"}}
    write_json_atomic(run_path(root, cfg), {"status": "ok", "config": cfg,
                                            "metrics": {"image_auroc": auroc, "pixel_auroc": 0.9, "aupro": None}})


def test_config_hash_is_stable_and_ignores_volatile_keys():
    a = {"method": {"name": "x", "k": 1}, "seed": 0, "results_dir": "/a", "device": "cpu"}
    b = {"seed": 0, "method": {"k": 1, "name": "x"}, "results_dir": "/b", "device": "cuda"}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "seed": 1})


def test_atomic_write_leaves_no_temp_and_refuses_nan(tmp_path):
    p = write_json_atomic(tmp_path / "x" / "r.json", {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x" / "bad.json", {"a": float("nan")})
    assert sorted(f.name for f in (tmp_path / "x").iterdir()) == ["r.json"]


def test_build_table_rows_mean_and_seeds(tmp_path):
    _record(tmp_path, "patchcore", "bottle", 1.0)
    _record(tmp_path, "patchcore", "cable", 0.9, seed=0)
    _record(tmp_path, "patchcore", "cable", 0.8, seed=1)
    _record(tmp_path, "cutpaste", "bottle", 0.95)
    out = build_table(tmp_path, "summary")
    pc = out[out.method == "patchcore"].set_index("category")
    assert pc.loc["cable", "image_auroc"] == pytest.approx(0.85)  # mean over seeds
    assert pc.loc["mean", "image_auroc"] == pytest.approx((1.0 + 0.85) / 2)
    assert (tmp_path / "summary.csv").is_file()
    md = (tmp_path / "summary.md").read_text()
    assert "| patchcore | mvtec | mean |" in md and "–" in md  # AUPRO None shown as a dash
    assert len(pd.read_csv(tmp_path / "summary.csv")) == 5
