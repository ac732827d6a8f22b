"""Nearest-neighbour search over the memory bank: faiss's exact ``IndexFlatL2`` (the paper's and the official
code's) or an approximate index (HNSW graph, IVF inverted lists) for faster prediction on large banks.

Every index returns faiss's squared L2 distances; the adapter turns them into patch scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from adbench.data.errors import ConfigError

INDEXES = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class KnnSpec:
    """``method.knn``: the index kind and its parameters (HNSW: ``hnsw_m`` links per node, ``ef_construction``,
    ``ef_search``; IVF: ``nlist`` lists, at most one per 39 bank rows (faiss's minimum for its k-means),
    ``nprobe`` lists visited per query)."""

    index: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 64
    nlist: int = 256
    nprobe: int = 8

    @classmethod
    def from_cfg(cls, cfg: Any) -> "KnnSpec":
        """From the ``method.knn`` config node (None: exact search); bad values raise ConfigError naming the key."""
        if cfg is None:
            return cls()
        kind = str(cfg.get("index", "flat"))
        if kind not in INDEXES:
            raise ConfigError(f"method.knn.index={kind!r}; choose one of {', '.join(INDEXES)}")
        values = {}
        for key in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe"):
            raw = cfg.get(key, getattr(cls, key))
            try:
                v = int(raw)
            except (TypeError, ValueError):
                v = 0
            if v < 1 or str(raw).strip() != str(v):
                raise ConfigError(f"method.knn.{key}={raw!r} must be a positive integer")
            values[key] = v
        return cls(index=kind, **values)


def build_index(bank: np.ndarray, spec: KnnSpec) -> faiss.Index:
    """A CPU index of ``bank`` (C-contiguous float32 [M, D]) of the kind ``spec`` names, filled and ready."""
    m, d = bank.shape
    if spec.index == "flat":
        index = faiss.IndexFlatL2(d)
    elif spec.index == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        index = faiss.index_factory(d, f"IVF{min(spec.nlist, max(1, m // 39))},Flat")  # owns its coarse quantizer
        index.train(bank)  # k-means with faiss's fixed clustering seed: the same lists every time
    index.add(bank)
    set_search_params(index, spec)
    return index


def set_search_params(index: faiss.Index, spec: KnnSpec) -> faiss.Index:
    """Apply ``ef_search`` / ``nprobe`` to a (possibly just read) index, in place; returns ``index`` itself (a
    downcast wrapper does not own the C++ object, so only ``index`` may be kept)."""
    typed = faiss.downcast_index(index)
    if isinstance(typed, faiss.IndexHNSW):
        typed.hnsw.efSearch = spec.ef_search
    elif isinstance(typed, faiss.IndexIVF):
        typed.nprobe = spec.nprobe
    return index


def index_kind(index: faiss.Index) -> str:
    """``flat``, ``hnsw`` or ``ivf`` for an index read from a file (``other`` for anything else)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlatL2):
        return "flat"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "other"
