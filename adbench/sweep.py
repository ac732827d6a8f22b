"""Sweep bookkeeping: a Hydra callback that prints how a multirun ended (ok / skipped / missing / failed)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_STATUS_FILE = "adbench_status.json"


class SweepSummary(Callback):
    """Each job leaves its status in its Hydra output folder; the summary reads them when the sweep ends."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            out_dir = Path(config.hydra.runtime.output_dir)
            ret = job_return.return_value if job_return.status.name == "COMPLETED" else {
                "status": "failed", "error": repr(job_return._return_value)}
        except Exception:  # noqa: BLE001 - bookkeeping never breaks a job
            return
        if isinstance(ret, dict):
            ret = {**ret, "overrides": list(config.hydra.overrides.task)}
            (out_dir / _STATUS_FILE).write_text(json.dumps(ret, default=str))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        paths = sorted(sweep_dir.glob(f"*/{_STATUS_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name))
        rows = [json.loads(p.read_text()) for p in paths]
        if not rows:
            return
        counts = Counter("skipped" if r.get("skipped") else r.get("status", "?") for r in rows)
        print(f"sweep finished: {len(rows)} jobs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        for r in rows:
            if r.get("status") in ("missing", "failed"):
                print(f"  {r['status']}: {' '.join(r.get('overrides', []))}: {r.get('error')}")
