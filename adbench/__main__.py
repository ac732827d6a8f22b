"""``python -m adbench [OVERRIDES]``: Hydra entry point around :func:`adbench.run.run`.

A single run stops with one ``error: ...`` line and exit code 2 on bad input. In a sweep (``-m``) every job is
isolated: a job whose data is missing or that fails is recorded (status ``missing`` / ``failed`` with the error)
and the sweep goes on (a failure never replaces an ``ok`` record: it goes beside it, to ``<record>.failed.json``);
with ``resume=true`` jobs whose result already exists are skipped.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from . import sweep  # noqa: F401 - registers the ${adbench_sweep_id:} resolver of conf/config.yaml's hydra.sweep.dir

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("adbench")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its import chatter is not for users


def _record_failure(cfg: DictConfig, status: str, err: BaseException) -> tuple[str | None, str | None]:
    """Write a failure record where the run's result would go -> (its path or None if impossible, the path of an
    ``ok`` record that was kept or None). A failure never replaces an ``ok`` record: it then goes beside it, to
    ``<record>.failed.json``."""
    from .results import config_hash, failure_path, read_record, run_path, write_json_atomic

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        path = run_path(cfg.results_dir, resolved)
        kept = None
        if path.is_file():
            rec, _ = read_record(path, validate=False)  # an ok record is kept, even one a hand edit broke
            if rec is not None and rec.get("status") == "ok":
                kept, path = str(path), failure_path(path)
        write_json_atomic(path, {
            "status": status, "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=8) if status == "failed" else None,
            "config": resolved, "config_hash": config_hash(resolved), "metrics": {},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return str(path), kept
    except Exception:  # noqa: BLE001 - recording must never mask the original error
        return None, None


def _failed(cfg: DictConfig, status: str, err: BaseException, error: str) -> dict[str, Any]:
    """Record a failed sweep job, log one line, and return its status for the sweep summary."""
    path, kept = _record_failure(cfg, status, err)
    where = (f"recorded in {path}" if path else "not recorded") + (f"; the earlier ok result {kept} is kept" if kept else "")
    log.error("job %s: %s (%s); the sweep goes on", status, error, where)
    return {"status": status, "error": error, "path": path, "kept": kept}


def job(cfg: DictConfig) -> dict[str, Any]:
    """One run; in a multirun, errors become records instead of ending the sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .data.errors import ConfigError, DataError
    from .run import run

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        record = run(cfg)
        return {"status": record.get("status", "ok"), "skipped": record.get("skipped", False), "path": record.get("path")}
    except (DataError, ConfigError) as err:
        if not multirun:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        return _failed(cfg, "missing" if isinstance(err, DataError) else "failed", err, str(err))
    except Exception as err:  # noqa: BLE001 - OOM, bugs: record, keep sweeping
        if not multirun:
            raise
        return _failed(cfg, "failed", err, f"{type(err).__name__}: {err}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    return job(cfg)


def main() -> None:
    from .overrides import explain

    problem = explain(sys.argv[1:])  # unknown method / option: one line before Hydra's multi-line report
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
