"""Sweep bookkeeping: a folder of its own for every sweep, and a Hydra callback that prints how a multirun ended
(ok / skipped / missing / failed)."""

from __future__ import annotations

import json
import os
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

_STATUS_FILE = "adbench_status.json"


def sweep_id() -> str:
    """``<pid>-<6 random hex digits>``: with the start time it names a sweep's folder (conf/config.yaml), so two
    sweeps started in the same second (on one machine or on two sharing a disk) never share one. Resolved once per
    config (cached, and the cache travels with the config to the launcher's job processes)."""
    return f"{os.getpid()}-{secrets.token_hex(3)}"


OmegaConf.register_new_resolver("adbench_sweep_id", sweep_id, use_cache=True, replace=True)


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) else None


class SweepSummary(Callback):
    """Each job leaves its status in its Hydra output folder; the summary reads them when the sweep ends."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            out_dir = Path(config.hydra.runtime.output_dir)
            ret = job_return.return_value if job_return.status.name == "COMPLETED" else {
                "status": "failed", "error": repr(job_return._return_value)}
            if isinstance(ret, dict):
                ret = {**ret, "overrides": list(config.hydra.overrides.task)}
                (out_dir / _STATUS_FILE).write_text(json.dumps(ret, default=str))
        except Exception:  # noqa: BLE001 - bookkeeping never breaks a job
            return

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        paths = sorted(sweep_dir.glob(f"*/{_STATUS_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name))
        rows = [r for r in map(_read_status, paths) if r is not None]
        if not rows:
            return
        counts = Counter("skipped" if r.get("skipped") else r.get("status", "?") for r in rows)
        print(f"sweep finished: {len(rows)} jobs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        for r in rows:
            if r.get("status") in ("missing", "failed"):
                kept = f" (the earlier ok result {r['kept']} is kept; this failure is in {r.get('path')})" \
                    if r.get("kept") else ""
                print(f"  {r['status']}: {' '.join(r.get('overrides', []))}: {r.get('error')}{kept}")
