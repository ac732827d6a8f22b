"""Sweeps: failures recorded and skipped, resume after a kill, launchers, Table 1 and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adbench.report import build_report
from adbench.results import run_path, write_json_atomic
from adbench.table1 import build, load_published, to_markdown

from .conftest import REPO, small_synthetic_overrides


def _adbench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADBENCH_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "adbench", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=timeout)


def _records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("runs/*/*/*/*.json")}


@pytest.fixture(scope="module")
def parallel_sweep(tmp_path_factory, small_synthetic_root):
    """A joblib-launched sweep over two real categories and one that does not exist, with overlays."""
    results = tmp_path_factory.mktemp("sweep")
    overrides = [o for o in small_synthetic_overrides(small_synthetic_root) if not o.startswith("category=")]
    p = _adbench("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "preset=tiny", f"results_dir={results}",
                 "category=washer,weave,nosuch", "save_maps=true", f"hydra.sweep.dir={results / 'hydra'}", *overrides)
    return results, p


def test_failing_job_does_not_stop_the_sweep(parallel_sweep):
    results, p = parallel_sweep
    assert p.returncode == 0, p.stderr[-3000:]
    recs = _records(results)
    assert recs["washer"]["status"] == "ok" and recs["weave"]["status"] == "ok"
    assert recs["nosuch"]["status"] == "missing" and "unknown synthetic category" in recs["nosuch"]["error"]
    assert "sweep finished: 3 jobs: 1 missing, 2 ok" in p.stdout


def test_report_from_sweep_has_tables_plots_and_overlays(parallel_sweep):
    results, _ = parallel_sweep
    html = build_report(results).read_text()
    assert html.count("<table") >= 1 and "washer" in html and "weave" in html
    assert html.count("data:image/svg+xml;base64,") >= 1 + 2  # cost figure, ROC / PRO curves per category
    assert html.count("data:image/jpeg;base64,") >= 2 * 6  # 6 overlay thumbnails per run
    assert "Best and worst" in html and "<script" not in html  # static, self-contained


def test_bad_config_job_is_recorded_as_failed(tmp_path, small_synthetic_root):
    p = _adbench("-m", "preset=tiny", f"results_dir={tmp_path}", "method.coreset.ratio=0.05,2.0",
                 f"hydra.sweep.dir={tmp_path / 'hydra'}", *small_synthetic_overrides(small_synthetic_root))
    assert p.returncode == 0, p.stderr[-3000:]
    statuses = sorted(json.loads(f.read_text())["status"] for f in tmp_path.glob("runs/**/*.json"))
    assert statuses == ["failed", "ok"]
    assert "coreset.ratio=2.0 must be in (0, 1]" in p.stdout + p.stderr


def test_resume_after_kill_runs_only_missing_jobs(tmp_path, small_synthetic_root):
    overrides = [o for o in small_synthetic_overrides(small_synthetic_root) if not o.startswith("category=")]
    # no resume override: resume=auto means true in a -m sweep
    args = ["-m", "preset=tiny", f"results_dir={tmp_path}", "category=washer,weave",
            f"hydra.sweep.dir={tmp_path / 'hydra'}", *overrides]
    proc = subprocess.Popen([sys.executable, "-m", "adbench", *args], cwd=REPO, env={**os.environ, "ADBENCH_PROGRESS": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list(tmp_path.glob("runs/**/washer/*.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # killed while the second job runs
    proc.wait()
    done = list(tmp_path.glob("runs/**/*.json"))
    assert [f.parent.name for f in done] == ["washer"], "kill came too late or too early"
    assert not list(tmp_path.glob("runs/**/*.tmp")), "a half-written result was left behind"
    stamp = done[0].stat().st_mtime_ns
    p = _adbench(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "skipped (resume: result exists)" in p.stdout
    assert done[0].stat().st_mtime_ns == stamp  # the finished job was not run again
    assert {k: v["status"] for k, v in _records(tmp_path).items()} == {"washer": "ok", "weave": "ok"}


def test_submitit_local_launcher(tmp_path, small_synthetic_root):
    p = _adbench("-m", "hydra/launcher=local", "preset=tiny", f"results_dir={tmp_path}",
                 f"hydra.sweep.dir={tmp_path / 'hydra'}", *small_synthetic_overrides(small_synthetic_root))
    assert p.returncode == 0, p.stderr[-3000:]
    assert _records(tmp_path)["washer"]["status"] == "ok"


def _fake_run(root: Path, method: str, category: str, auroc: float, finished_at: str | None = None,
              **method_cfg) -> None:
    cfg = {"method": {"name": method, **method_cfg}, "dataset": {"name": "mvtec"}, "category": category, "seed": 0,
           "preset": {"name": "cpu"}}
    write_json_atomic(run_path(root, cfg), {"status": "ok", "config": cfg, "finished_at": finished_at,
                                            "metrics": {"image_auroc": auroc, "pixel_auroc": 0.97, "aupro": 0.9}})


def test_table1_takes_the_newest_record_when_a_config_changed(tmp_path):
    _fake_run(tmp_path, "patchcore", "bottle", 0.90, "2026-11-20T10:00:00+0000", coreset={"ratio": 0.1}, embed_dim=1024)
    _fake_run(tmp_path, "patchcore", "bottle", 0.99, "2026-11-22T10:00:00+0000", coreset={"ratio": 0.1}, embed_dim=128)
    table = build(tmp_path, "cpu", ["patchcore"])
    row = table[(table.variant == "coreset 10%") & (table.category == "bottle")].iloc[0]
    assert row.image_auroc == 99.0 and row.n_runs == 1  # not the mean with the stale record


def test_table1_missing_categories_and_published(tmp_path):
    _fake_run(tmp_path, "patchcore", "bottle", 0.995, coreset={"ratio": 0.1})
    _fake_run(tmp_path, "cutpaste", "bottle", 0.97, variant="3way")
    table = build(tmp_path, "cpu", ["patchcore", "cutpaste"])
    row = table[(table.variant == "coreset 10%") & (table.category == "bottle")].iloc[0]
    assert row.image_auroc == 99.5 and row.published_image_auroc == 100.0 and row["diff"] == -0.5
    assert row.pixel_auroc == 97.0 and row.aupro == 90.0
    carpet = table[(table.variant == "coreset 10%") & (table.category == "carpet")].iloc[0]
    assert carpet.image_auroc is None or carpet.image_auroc != carpet.image_auroc  # not run: no value
    assert carpet.published_image_auroc == 98.7
    cp = table[(table.variant == "3way") & (table.category == "bottle")].iloc[0]
    assert cp.image_auroc == 97.0 and cp.published_image_auroc == 98.3
    md = to_markdown(table, "cpu", "make table1")
    assert "| bottle | – | 100.0 | – |" in md  # 25 % not run: dash, never a number
    assert "mean (1/15 run)" in md
    pub = load_published()
    for (method, variant, metric), sub in pub[pub.category != "mean"].groupby(["method", "variant", "metric"]):
        mean = pub[(pub.method == method) & (pub.variant == variant) & (pub.metric == metric) & (pub.category == "mean")]
        assert len(sub) == 15 and abs(sub.value.mean() - float(mean.value.iloc[0])) < 0.1, (method, variant, metric)


@pytest.mark.skipif(not any(Path(d, "chromium").exists() for d in os.environ.get("PATH", "").split(":")),
                    reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(parallel_sweep, tmp_path):
    import numpy as np
    from PIL import Image

    results, _ = parallel_sweep
    report = build_report(results)
    png = tmp_path / "report.png"
    p = subprocess.run(["bash", str(REPO / "scripts" / "screenshot_report.sh"), str(report), str(png), "1600"],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0 and png.is_file(), p.stderr
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[:2] == (1600, 1280)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # text, tables and plots, not a blank page


def test_resume_values():
    from adbench.data.errors import ConfigError
    from adbench.run import resume_enabled

    assert resume_enabled(True) and resume_enabled("true") and not resume_enabled(False) and not resume_enabled(None)
    assert not resume_enabled("auto")  # a single run (no Hydra multirun here) runs again
    with pytest.raises(ConfigError, match="resume='sometimes'; choose true, false or auto"):
        resume_enabled("sometimes")


def test_resume_runs_again_when_the_record_lacks_requested_maps(tmp_path, small_synthetic_root):
    from omegaconf import OmegaConf

    from adbench.run import run

    from .conftest import compose_cfg

    base = ["preset=tiny", f"results_dir={tmp_path}", "resume=true", *small_synthetic_overrides(small_synthetic_root)]
    first = run(compose_cfg(base))  # without save_maps: no overlays in the record
    assert not first.get("overlays") and not first.get("skipped")
    again = run(compose_cfg(base))
    assert again["skipped"]  # same config, nothing new asked for
    with_maps = run(compose_cfg([*base, "save_maps=true"]))  # same hash, but maps asked for: runs again
    assert not with_maps.get("skipped") and with_maps["overlays"]
    path = run_path(tmp_path, OmegaConf.to_container(compose_cfg(base), resolve=True))
    assert json.loads(path.read_text())["overlays"] == with_maps["overlays"]
    assert run(compose_cfg([*base, "save_maps=true"]))["skipped"]
