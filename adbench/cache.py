"""Opt-in on-disk cache of extracted features, keyed by everything that determines them.

Used by feature-based methods so that runs differing only downstream of the backbone (e.g. PatchCore's coreset
ratio ablation) extract once. Entries are written atomically; a corrupt entry is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

log = logging.getLogger("adbench")


def weights_id(weights: str | None) -> str:
    """Identity of a weights option: the name, or a local file's path, size and mtime."""
    if weights in (None, "none", "imagenet"):
        return str(weights)
    p = Path(str(weights)).expanduser()
    st = p.stat() if p.exists() else None
    return f"{p.resolve()}:{st.st_size if st else 0}:{int(st.st_mtime) if st else 0}"


def data_id(dataset: str, root: str | Path, category: str, image_size: int | None, crop_size: int | None,
            tiling: dict[str, int] | None = None) -> str:
    """``RunContext.data_id``: what identifies a run's input pixels in feature-cache keys (dataset, resolved root,
    category, resize, crop, and the tiling when tiled). One definition, so every caller's keys match."""
    return json.dumps([str(dataset), str(Path(str(root)).resolve()), str(category), image_size, crop_size]
                      + ([tiling] if tiling else []))


class FeatureCache:
    """``get_or_compute(parts, fn)``: load the tensors saved under the hash of ``parts``, or run ``fn`` and save."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def path(self, parts: dict[str, Any]) -> Path:
        return self.root / f"{self.key(parts)}.pt"

    def get_or_compute(self, parts: dict[str, Any], fn: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        path = self.path(parts)
        if path.is_file():
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
                log.info("feature cache hit: %s", path)
                return data["tensors"]
            except Exception as err:  # noqa: BLE001 - a broken entry is just recomputed
                log.warning("feature cache entry %s unreadable (%s); recomputing", path, err)
        tensors = fn()
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"parts": json.dumps(parts, sort_keys=True, default=str),
                        "tensors": {k: v.detach().cpu() for k, v in tensors.items()}}, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return tensors
