"""Opt-in on-disk cache of extracted features, keyed by everything that determines them.

Used by feature-based methods so that runs differing only downstream of the backbone (e.g. PatchCore's coreset
ratio ablation) extract once. Entries are written atomically; a corrupt entry is recomputed. A run's key holds the
SHA-256 of every image file it reads (:func:`files_id`), so new pixels under old file names are a new entry, and
:func:`entries_used` tells the run which entries it read or wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

log = logging.getLogger("adbench")


def weights_id(weights: str | None) -> str:
    """Identity of a weights option: the name, or a local file's path, size and mtime."""
    if weights in (None, "none", "imagenet"):
        return str(weights)
    p = Path(str(weights)).expanduser()
    st = p.stat() if p.exists() else None
    return f"{p.resolve()}:{st.st_size if st else 0}:{int(st.st_mtime) if st else 0}"


def files_id(paths: Iterable[str | Path]) -> str:
    """SHA-256 over the resolved path, size and content SHA-256 of each file (sorted): changes whenever a byte of
    any of them does (all of MVTec AD bottle, 292 files, 156 MB: about 0.2 s)."""
    total = hashlib.sha256()
    for p in sorted({Path(p).resolve() for p in paths}):
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        total.update(f"{p}\0{p.stat().st_size}\0{digest.hexdigest()}\n".encode())
    return total.hexdigest()


def data_id(dataset: str, root: str | Path, category: str, image_size: int | None, crop_size: int | None,
            tiling: dict[str, int] | None = None, files: Iterable[str | Path] = ()) -> str:
    """``RunContext.data_id``: what identifies a run's input pixels in feature-cache keys (dataset, resolved root,
    category, resize, crop, the tiling when tiled, and the :func:`files_id` of ``files``, the images read). One
    definition, so every caller's keys match."""
    files = list(files)
    return json.dumps([str(dataset), str(Path(str(root)).resolve()), str(category), image_size, crop_size]
                      + ([tiling] if tiling else []) + ([files_id(files)] if files else []))


_collectors: list[list[dict[str, Any]]] = []


@contextmanager
def entries_used() -> Iterator[list[dict[str, Any]]]:
    """Within the block, every entry a :class:`FeatureCache` reads or writes is appended to the yielded list as
    ``{"entry": path, "hit": read?}``."""
    used: list[dict[str, Any]] = []
    _collectors.append(used)
    try:
        yield used
    finally:
        _collectors.remove(used)


def _note(path: Path, hit: bool) -> None:
    for used in _collectors:
        used.append({"entry": str(path), "hit": hit})


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
                _note(path, True)
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
        _note(path, False)
        return tensors
