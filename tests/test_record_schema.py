"""Every record is checked against one schema when it is read: an invalid one is skipped with one warning line
naming the file and the field, and the tables and the report are built from the others."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from adbench.report import build_report
from adbench.results import main as results_main
from adbench.results import read_record, run_path, write_json_atomic
from adbench.table1.__main__ import main as table1_main

from .conftest import REPO


def _good(seed: int = 0) -> dict:
    cfg = {"method": {"name": "patchcore", "coreset": {"ratio": 0.1}}, "dataset": {"name": "mvtec"},
           "category": "bottle", "seed": seed, "preset": {"name": "cpu"}}
    return {"status": "ok", "config": cfg, "finished_at": "2026-11-29T10:00:00", "fit_s": 10.0, "predict_s": 2.0,
            "metrics": {"image_auroc": 0.98, "pixel_auroc": 0.97, "aupro": None, "auroc_broken_large": 1.0},
            "per_image": {"score": [0.1, 0.9], "label": [0, 1], "defect_type": ["good", "broken_large"],
                          "file": ["good/000.png", "broken_large/000.png"]},
            "curves": {"pixel_roc": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}, "pro": {"fpr": [0.0, 0.3], "pro": [0, 1]}},
            "train_log": [{"stage": "train", "step": 1, "loss": 0.5}], "overlays": [], "feature_cache": None}


BAD = {  # what a hand edit or a foreign tool may leave, and the field the warning must name
    "auroc 7.5": (lambda r: r["metrics"].update(image_auroc=7.5), "metrics.image_auroc"),
    "string metric": (lambda r: r["metrics"].update(pixel_auroc="0.9"), "metrics.pixel_auroc"),
    "finished_at number": (lambda r: r.update(finished_at=12345), "finished_at"),
    "seed string": (lambda r: r["config"].update(seed="zero"), "config.seed"),
    "curves string": (lambda r: r.update(curves="oops"), "curves"),
    "category number": (lambda r: r["config"].update(category=5), "config.category"),
    "metrics list": (lambda r: r.update(metrics=[0.9]), "metrics"),
    "per_image labels": (lambda r: r["per_image"].update(label="01"), "per_image.label"),
    "NaN metric": (lambda r: r["metrics"].update(aupro=float("nan")), "metrics.aupro"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_record_is_skipped_with_one_warning(tmp_path, capsys, case):
    write_json_atomic(run_path(tmp_path, _good()["config"]), _good())
    bad = _good(seed=1)
    edit, field = BAD[case]
    edit(bad)
    bad_path = tmp_path / "runs" / "patchcore" / "mvtec" / "bottle" / "seed1-handedit.json"
    bad_path.write_text(json.dumps(bad))

    assert results_main(["--results-dir", str(tmp_path)]) == 0
    assert table1_main(["--no-run", "--preset", "cpu", "--results", str(tmp_path), "--no-report"]) == 0
    build_report(tmp_path, preset="cpu")
    out, err = capsys.readouterr()
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert warnings and all(w == warnings[0] for w in warnings), err  # the same one line from each reader
    assert str(bad_path) in warnings[0] and field in warnings[0] and warnings[0].endswith("skipped"), warnings[0]
    assert "Traceback" not in err
    assert "98.0" in (tmp_path / "table1.md").read_text()  # the good record is in the table
    rec, problem = read_record(bad_path)
    assert rec is None and str(bad_path) in problem and field in problem, problem


def test_records_adbench_writes_are_valid(tmp_path, small_synthetic_root):
    from adbench.run import run

    from .conftest import compose_cfg, small_synthetic_overrides

    ok = run(compose_cfg(["method=mean_image", f"results_dir={tmp_path}", *small_synthetic_overrides(small_synthetic_root)]))
    failed = {"status": "failed", "error": "RuntimeError: x", "traceback": None, "config": _good()["config"],
              "config_hash": "0" * 12, "metrics": {}, "finished_at": "2026-11-29T10:00:00+0000"}
    (tmp_path / "failed.json").write_text(json.dumps(failed))
    (tmp_path / "good.json").write_text(json.dumps(_good()))
    for p in [ok["path"], tmp_path / "failed.json", tmp_path / "good.json",
              *glob.glob(str(REPO / "results" / "runs" / "**" / "*.json"), recursive=True)]:
        assert read_record(p)[1] is None, read_record(p)[1]
