"""Training curves: a method's ``train_log`` into the run record (down-sampled) and into TensorBoard.

The contract (a method that trains): after ``fit`` it has ``train_log: list[dict]``, one entry per logged step,
``{"stage": str, "step": int, "loss": float}`` plus optional scalar keys (``acc``, ``lr``, ``val_ratio``, ...).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .data.errors import ConfigError

LOGGERS = ("none", "tensorboard")
MAX_POINTS = 300  # per stage, in the run record


def check_logger(value: Any) -> str:
    """``logger=none|tensorboard``; anything else is a ConfigError naming the option."""
    name = "none" if value is None or value is False else str(value).lower()
    if name not in LOGGERS:
        raise ConfigError(f"logger={value!r} is not known; choose one of: {', '.join(LOGGERS)}")
    return name


def _scalar(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def clean_log(log: Any) -> list[dict[str, Any]]:
    """The entries of a ``train_log`` that follow the contract, with scalar values as floats (NaN/inf -> None)."""
    out = []
    for e in log or []:
        if not isinstance(e, Mapping) or "step" not in e:
            continue
        row: dict[str, Any] = {"stage": str(e.get("stage", "train")), "step": int(e["step"])}
        for k, v in e.items():
            if k not in ("stage", "step") and not isinstance(v, (str, bytes)):
                row[k] = _scalar(v)
        out.append(row)
    return out


def downsample(log: Sequence[Mapping[str, Any]], max_points: int = MAX_POINTS) -> list[dict[str, Any]]:
    """At most ``max_points`` entries per stage: consecutive entries averaged in equal windows.

    A window keeps its last step; each scalar is the mean of its finite values in the window (None when it has
    none). A stage with at most ``max_points`` entries is kept as it is.
    """
    by_stage: dict[str, list[Mapping[str, Any]]] = {}
    for e in log:
        by_stage.setdefault(str(e["stage"]), []).append(e)
    out: list[dict[str, Any]] = []
    for stage, rows in by_stage.items():
        if len(rows) <= max_points:
            out += [dict(r) for r in rows]
            continue
        edges = [round(i * len(rows) / max_points) for i in range(max_points + 1)]
        for lo, hi in zip(edges[:-1], edges[1:]):
            window = rows[lo:hi]
            keys = dict.fromkeys(k for r in window for k in r if k not in ("stage", "step"))
            row: dict[str, Any] = {"stage": stage, "step": int(window[-1]["step"])}
            for k in keys:
                vals = [r[k] for r in window if r.get(k) is not None]
                row[k] = round(sum(vals) / len(vals), 6) if vals else None
            out.append(row)
    return out


def record_log(method: Any) -> list[dict[str, Any]] | None:
    """What goes into the run record: the method's ``train_log`` cleaned and down-sampled; None if it has none."""
    log = clean_log(getattr(method, "train_log", None))
    return downsample(log) if log else None


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"method.coreset.ratio": 0.1, ...} with values TensorBoard's hparams accept."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        elif isinstance(v, bool) or isinstance(v, (int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def tensorboard_dir(results_dir: str | Path, record_path: str | Path) -> Path:
    """``<results_dir>/tensorboard/<method>/<dataset>/<category>/seed<N>-<hash>`` for a record under runs/."""
    rel = Path(record_path).relative_to(Path(results_dir) / "runs").with_suffix("")
    return Path(results_dir) / "tensorboard" / rel


def write_tensorboard(log_dir: str | Path, train_log: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any],
                      config: Mapping[str, Any]) -> Path:
    """Write one TensorBoard event file: every ``train_log`` scalar as ``<stage>/<key>`` against step, the final
    metrics as ``metrics/<name>`` and the resolved config as hyper-parameters (with the metrics beside them).

    The folder is written beside its final place and swapped in, so a failure leaves the previous one.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    log_dir = Path(log_dir)
    log_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{log_dir.name}.", dir=log_dir.parent))
    try:
        writer = SummaryWriter(log_dir=str(tmp))
        for e in clean_log(train_log):
            for k, v in e.items():
                if k not in ("stage", "step") and v is not None:
                    writer.add_scalar(f"{e['stage']}/{k}", v, e["step"])
        final = {f"metrics/{k}": float(v) for k, v in metrics.items() if _scalar(v) is not None}
        for k, v in final.items():
            writer.add_scalar(k, v, 0)
        for summary in hparams(_flat(config), final):  # experiment, session start, session end
            writer.file_writer.add_summary(summary)
        writer.close()
        if log_dir.exists():
            shutil.rmtree(log_dir)
        tmp.rename(log_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return log_dir
