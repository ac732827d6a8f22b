"""The command line: --help, one-line errors with exit code 2, a run that prints metrics and writes JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import REPO, small_synthetic_overrides


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "ADBENCH_PROGRESS": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "adbench", *args], cwd=REPO, capture_output=True, text=True,
                          env=e, timeout=600)


def test_help_lists_groups_and_options():
    out = _run("--help").stdout
    for word in ("method:", "dataset:", "preset:", "experiment:", "patchcore", "synthetic", "dataset.root=DIR",
                 "method.backbone.weights", "results_dir=DIR"):
        assert word in out


def test_missing_root_is_one_line_and_exit_2(tmp_path):
    p = _run(f"dataset.root={tmp_path / 'nope'}", f"results_dir={tmp_path / 'r'}")
    assert p.returncode == 2
    err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "dataset root not found" in err[0] and "mvtec.com" in err[0]


def test_unknown_method_and_bad_results_dir(tmp_path):
    p = _run("method=nosuch")
    assert p.returncode != 0 and "nosuch" in p.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file instead
        ro = tmp_path / "afile"
        ro.write_text("")
    p = _run("dataset=synthetic", f"dataset.root={tmp_path / 'syn'}", f"results_dir={ro / 'sub'}")
    assert p.returncode == 2 and "results_dir=" in p.stderr and "not writable" in p.stderr


def test_run_prints_metrics_and_writes_json(tmp_path, small_synthetic_root):
    p = _run("preset=tiny", f"results_dir={tmp_path}", *small_synthetic_overrides(small_synthetic_root))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "image_auroc" in p.stdout and "pixel_auroc" in p.stdout and "aupro" in p.stdout
    files = list(tmp_path.glob("runs/patchcore/synthetic/washer/*.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    for key in ("metrics", "config", "versions", "git_commit", "fit_s", "predict_s", "evaluate_s", "peak_rss_mb"):
        assert key in rec
    assert {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "auroc_scratch"} <= set(rec["metrics"])
    assert rec["versions"]["torch"] and rec["config"]["seed"] == 0


def test_multirun_runs_each_category(tmp_path, small_synthetic_root):
    p = _run("-m", "preset=tiny", f"results_dir={tmp_path}", *small_synthetic_overrides(small_synthetic_root),
             "category=washer,weave", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert {f.parent.name for f in tmp_path.glob("runs/patchcore/synthetic/*/*.json")} == {"washer", "weave"}
