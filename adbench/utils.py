"""Small helpers shared by the harness and the methods: seeding, devices, progress bars, memory."""

from __future__ import annotations

import json
import os
import random
import resource
import sys
from pathlib import Path
from typing import Any, Iterable, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error naming the option."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .data.errors import ConfigError

        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    return dev


def progress(it: Iterable[T], desc: str, enabled: bool = True, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm progress bar on stderr, off when ``enabled`` is False or ADBENCH_PROGRESS=0."""
    disable = (not enabled) or os.environ.get("ADBENCH_PROGRESS", "1") == "0"
    return tqdm(it, desc=desc, total=total, unit=unit, disable=disable, file=sys.stderr, leave=False, dynamic_ncols=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status`` (this program's own memory; ``ru_maxrss`` survives ``exec`` and so
    reports at least the RSS of the parent that spawned it); elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def torch_load(path: str, device: torch.device | str = "cpu") -> dict:
    """``torch.load`` of a checkpoint written by adbench (tensors, numbers, strings)."""
    return torch.load(path, map_location=device, weights_only=True)


def save_method_state(path: str | Path, method: str, version: int, cfg: Any, **payload: Any) -> None:
    """Write a method's own checkpoint file: its name, format ``version``, resolved config (JSON) and ``payload``."""
    from omegaconf import OmegaConf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = json.dumps(OmegaConf.to_container(cfg, resolve=True))
    torch.save({"method": method, "version": version, "config": config, **payload}, path)


def load_method_state(path: str | Path, method: str, version: int) -> tuple[dict, Any]:
    """A file written by :func:`save_method_state`, checked (it exists, was written by ``method``, at format
    ``version``) -> (its state dict, its config as a DictConfig)."""
    from omegaconf import OmegaConf

    from .data.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {method} checkpoint at {path}")
    state = torch_load(str(path))
    if state.get("method") != method:
        raise ConfigError(f"{path} is a checkpoint of method {state.get('method')!r}, not {method!r}")
    if state.get("version") != version:
        raise ConfigError(f"{path} has checkpoint version {state.get('version')}, this adbench reads {version}")
    return state, OmegaConf.create(json.loads(state["config"]))


def ensure_writable_dir(path: str | Path, option: str) -> Path:
    """Create ``path`` and check that files can be written there; else a one-line error naming ``option``."""
    from .data.errors import ConfigError

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{option}={path} is not writable ({err.strerror}); pass {option}=DIR") from None
    return p
