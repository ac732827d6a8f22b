"""Small helpers shared by the harness and the methods: seeding, devices, progress bars, memory."""

from __future__ import annotations

import os
import random
import resource
import sys
from typing import Iterable, TypeVar

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
    """Peak resident set size of this process so far, in MiB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def torch_load(path: str, device: torch.device | str = "cpu") -> dict:
    """``torch.load`` of a checkpoint written by adbench (tensors, numbers, strings)."""
    return torch.load(path, map_location=device, weights_only=True)
