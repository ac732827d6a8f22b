"""A real sweep through SLURM's sbatch (submitit): records, a job cancelled mid-run and resumed, a failing job.

Needs a SLURM cluster: `make test-slurm` starts a one-node one on this machine (scripts/slurm_local.sh), runs
`pytest -m slurm` and stops it. Skipped when sbatch is not installed or no controller answers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .conftest import REPO, small_synthetic_overrides

pytestmark = pytest.mark.slurm

LOCAL_CONF = Path(os.environ.get("SLURM_LOCAL_DIR", Path(os.environ.get("TMPDIR", "/tmp")) / "adbench-slurm"),
                  "slurm.conf")
# the launcher settings of the README's cluster example, sized for a CPU-only test node
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20", "hydra.launcher.array_parallelism=8"]


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """Environment for SLURM clients: the local cluster's SLURM_CONF when it runs, else the system's."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch not found: install SLURM, or run `make test-slurm` (starts a local one-node cluster)")
    env = {**os.environ, "ADBENCH_PROGRESS": "0"}
    if "SLURM_CONF" not in env and LOCAL_CONF.is_file():
        env["SLURM_CONF"] = str(LOCAL_CONF)
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%a"], env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo timed out: no SLURM controller answers (start one: scripts/slurm_local.sh start)")
    if p.returncode != 0 or "up" not in p.stdout:
        pytest.skip(f"no SLURM partition up ({p.stderr.strip()[:200]}); start one: scripts/slurm_local.sh start")
    return env


def _squeue(env: dict[str, str], name: str) -> dict[str, str]:
    """Array task id -> state for the jobs named ``name`` (one line per array task)."""
    out = subprocess.run(["squeue", "-h", "-r", "-n", name, "-o", "%i %T"], env=env, capture_output=True,
                         text=True, timeout=30).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _wait(cond, timeout: float, what: str, step: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _records(results: Path) -> dict[tuple[str, float], tuple[Path, dict]]:
    out = {}
    for p in results.glob("runs/patchcore/synthetic/*/*.json"):
        rec = json.loads(p.read_text())
        out[(rec["config"]["category"], float(rec["config"]["method"]["coreset"]["ratio"]))] = (p, rec)
    return out


def test_slurm_sweep_records_cancel_resume_and_failure(slurm_env, tmp_path, small_synthetic_root):
    name = f"adbench-test-{uuid.uuid4().hex[:8]}"
    results = tmp_path / "results"
    data = [o for o in small_synthetic_overrides(small_synthetic_root) if not o.startswith("category=")]
    # 4 jobs: two categories x coreset ratio 0.1 (fine) and 2.0 (raises on the node: must be in (0, 1])
    args = ["-m", *LAUNCHER, f"hydra.launcher.name={name}", "preset=tiny", f"results_dir={results}",
            "category=washer,weave", "method.coreset.ratio=0.1,2.0", *data]
    if os.environ.get("ADBENCH_SLURM_PARTITION"):
        args.append(f"hydra.launcher.partition={os.environ['ADBENCH_SLURM_PARTITION']}")
    t0 = time.time()
    log1 = tmp_path / "sweep1.log"
    with open(log1, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "adbench", *args, f"hydra.sweep.dir={tmp_path / 'sweep1'}"],
                                  cwd=REPO, env=slurm_env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        # the launcher logs "#<index> : <overrides>" per job; the array task <id>_<index> runs it
        jobs = _wait(lambda: dict(re.findall(r"#(\d+) : (.*)", log1.read_text())) or None, 300, "submission")
        _wait(lambda: len(re.findall(r"#(\d+) : ", log1.read_text())) == 4 and _squeue(slurm_env, name) or None,
              120, "the job array in squeue")
        victim = max(int(i) for i, o in jobs.items() if "ratio=0.1" in o and "category=weave" in o)
        task = _wait(lambda: next((t for t, s in _squeue(slurm_env, name).items()
                                   if t.endswith(f"_{victim}") and s == "RUNNING"), None), 600, "the victim to run")
        array_id = task.split("_")[0]
        job_log = tmp_path / "sweep1" / ".submitit" / task / f"{task}_0_log.out"
        # mid-run: submitit has started the job on the node (it is importing adbench / running it)
        _wait(lambda: job_log.is_file() and "Starting with JobEnvironment" in job_log.read_text(), 300,
              "the victim's job log")
        subprocess.run(["scancel", task], env=slurm_env, check=True, timeout=30)
        t_cancel = time.time() - t0
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    _wait(lambda: not _squeue(slurm_env, name), 600, "the other jobs to finish")
    text1 = log1.read_text()
    # the driver reports the cancelled job (submitit learns its state from sacct) and stops with an error
    assert driver.returncode != 0 and "has not produced any output (state: CANCELLED" in text1, text1[-3000:]
    state = subprocess.run(["sacct", "-n", "-X", "-j", task, "-o", "State"], env=slurm_env, capture_output=True,
                           text=True, timeout=30).stdout
    assert "CANCELLED" in state, state

    recs = _records(results)
    assert ("weave", 0.1) not in recs, "the cancelled job wrote a record: the cancel came too late"
    assert not list(results.glob("runs/**/.*.tmp")), "a half-written record was left behind"
    assert set(recs) == {("washer", 0.1), ("washer", 2.0), ("weave", 2.0)}
    ok_path, ok = recs[("washer", 0.1)]
    assert ok["status"] == "ok" and ok["n_test"] == 6 + 3 * 3 and ok["config"]["preset"]["name"] == "tiny"
    assert all(0.0 <= ok["metrics"][k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "aupro"))
    for cat in ("washer", "weave"):  # the failing jobs did not stop the others, and say why
        _, bad = recs[(cat, 2.0)]
        assert bad["status"] == "failed" and "coreset.ratio=2.0 must be in (0, 1]" in bad["error"], bad
    for i in range(4):  # every job ran as a task of the array, through sbatch
        out = (tmp_path / "sweep1" / ".submitit" / f"{array_id}_{i}" / f"{array_id}_{i}_0_log.out").read_text()
        assert f"Starting with JobEnvironment(job_id={array_id}_{i}," in out
    stamp = ok_path.stat().st_mtime_ns

    # the same command again: the finished job is skipped, the cancelled one (and the failing ones) run again
    t1 = time.time()
    p = subprocess.run([sys.executable, "-m", "adbench", *args, f"hydra.sweep.dir={tmp_path / 'sweep2'}"],
                       cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=900)
    t_rerun = time.time() - t1
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "sweep finished: 4 jobs: 2 failed, 1 ok, 1 skipped" in p.stdout, p.stdout[-3000:]
    recs = _records(results)
    assert ok_path.stat().st_mtime_ns == stamp, "the finished job ran again"
    _, resumed = recs[("weave", 0.1)]
    assert resumed["status"] == "ok" and all(0.0 <= resumed["metrics"][k] <= 1.0 for k in ("image_auroc", "aupro"))
    assert resumed["config_hash"] != ok["config_hash"]  # one file per config: two jobs never share a record
    assert len(list(results.glob("runs/**/*.json"))) == 4
    print(f"slurm sweep: cancel at {t_cancel:.0f} s, first sweep {time.time() - t0 - t_rerun:.0f} s, "
          f"rerun {t_rerun:.0f} s")
