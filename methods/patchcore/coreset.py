"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Two algorithms return the same indices:

* ``plain``: each selection computes the squared distance of every bank row to the new centre (one pass over
  the contiguous projected bank, split over threads) and takes an in-place minimum. Memory-bandwidth bound.
* ``accelerated`` (the default on CPU): the same greedy k-center, but a selection only computes distances for
  points that might get closer to the new centre than their current minimum. Every point remembers a centre
  ``a(p)`` and its distance; by the triangle inequality ``d(p, c) >= d(c, a(p)) - d(p, a(p))``, so whole
  clusters (and whole groups of clusters, bounded through pivot centres) are skipped when the centre-to-centre
  distance is large enough. The skip tests use certified bounds on the floating-point error of the distance
  kernel, so a skipped point's computed distance would never have lowered its minimum: the minimum array, and
  hence every ``argmax`` (ties: first index), is bit-identical to the plain loop's.

Both compute distances with faiss's ``fvec_L2sqr_ny`` (direct sum of squared differences): every row's value is
a function of that row and the centre alone, whatever subset of rows a call covers. On a CUDA device the plain
loop runs in torch (norm expansion, one mat-vec per selection); the accelerated one is CPU only.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import torch

from adbench.utils import progress

ALGORITHMS = ("auto", "plain", "accelerated")
_U = 2.0**-24  # unit roundoff of float32
_EPS64 = 1e-12  # slack for the float64 arithmetic of the bounds
_CHECK = 64  # accelerated: steps between checks whether pruning pays off
_SPARSE_FRACTION = 0.1  # switch to sparse steps when they would compute less than this fraction of the bank
_DENSE_FRACTION = 0.25  # ... and back to full passes when they computed more than this on average
_NO_INDEX = np.iinfo(np.int64).max
_FAISS_SPECIAL_D = (1, 2, 4, 8, 12)  # dimensions with their own fvec_L2sqr_ny kernels


def project(features: torch.Tensor, dim: int | None, seed: int = 0, chunk: int = 65536) -> torch.Tensor:
    """Random linear projection to ``dim`` (Johnson-Lindenstrauss), chunked; None or >= D keeps the features."""
    n, d = features.shape
    if dim is None or dim >= d:
        return features.float().contiguous()
    weight = projection_matrix(d, dim, seed).to(features.device)
    out = torch.empty(n, dim, device=features.device, dtype=torch.float32)
    for i in range(0, n, chunk):
        torch.matmul(features[i : i + chunk].float(), weight, out=out[i : i + chunk])
    return out


def projection_matrix(d: int, dim: int, seed: int = 0) -> torch.Tensor:
    """The [d, dim] matrix of :func:`project`: U(-1/sqrt(d), 1/sqrt(d)) like an ``nn.Linear(d, dim)`` init."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    bound = 1.0 / math.sqrt(d)
    return (torch.rand(d, dim, generator=g) * 2 - 1).mul_(bound)


def _threads() -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


class _L2Kernel:
    """Squared L2 distances of one centre to many rows with faiss's ``fvec_L2sqr_ny``.

    faiss computes each row's value from that row and the centre alone (one SIMD routine per dimension), so a
    row gets the same bits whether it is passed with the whole bank or gathered with a few others. Large calls
    are split over threads (faiss releases the GIL).
    """

    def __init__(self, d: int, threads: int) -> None:
        self.d = d
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self.centre = np.empty(d, dtype=np.float32)

    def set_centre(self, row: np.ndarray) -> None:
        self.centre[:] = row

    def _run(self, out: np.ndarray, rows: np.ndarray) -> None:
        faiss.fvec_L2sqr_ny(faiss.swig_ptr(out), faiss.swig_ptr(self.centre), faiss.swig_ptr(rows), self.d, len(rows))

    def __call__(self, out: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``out[i] = ||rows[i] - centre||^2`` for C-contiguous float32 ``rows`` [m, d]; returns ``out[:m]``."""
        m = len(rows)
        out = out[:m]
        if self.pool is None or m < 16384:
            if m:
                self._run(out, rows)
            return out
        step = -(-m // self.threads)
        futures = [self.pool.submit(self._run, out[i : i + step], rows[i : i + step]) for i in range(0, m, step)]
        for f in futures:
            f.result()
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _start_min_d(bank: np.ndarray, kernel: _L2Kernel, start_points: int, seed: int) -> np.ndarray:
    """Squared mean distance of every row to ``start_points`` random rows (the reference sampler's start)."""
    n = len(bank)
    g = torch.Generator(device="cpu").manual_seed(seed)
    starts = torch.randperm(n, generator=g)[: min(start_points, n)].tolist()
    acc = np.zeros(n, dtype=np.float32)
    buf = np.empty(n, dtype=np.float32)
    for s in starts:
        kernel.set_centre(bank[s])
        acc += np.sqrt(kernel(buf, bank))
    acc /= np.float32(len(starts))
    return np.square(acc, out=acc)


def _as_bank(features: torch.Tensor, projection_dim: int | None, seed: int) -> np.ndarray:
    bank = project(features, projection_dim, seed)
    return np.ascontiguousarray(bank.cpu().numpy(), dtype=np.float32)


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int | None = 128, start_points: int = 10,
                   seed: int = 0, show_progress: bool = True, algorithm: str = "auto",
                   stats: dict | None = None) -> torch.Tensor:
    """Indices [n_select] of an approximate greedy k-center coreset of ``features`` [N, D].

    As in PatchCore's reference sampler: project to ``projection_dim`` (None = exact, no projection), start from
    the mean distance to ``start_points`` random points, then repeatedly take the point farthest from the
    selected set (``argmax``, first index on ties). ``algorithm``: ``plain``, ``accelerated`` (same indices,
    skips points the triangle inequality rules out) or ``auto`` (accelerated on CPU, plain on a GPU).
    ``stats``, when given, receives counters (distances computed, bank passes saved).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"coreset algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n, device=features.device)
    if features.device.type != "cpu":
        if algorithm == "accelerated":
            raise ValueError("the accelerated coreset runs on CPU; use algorithm=plain (or auto) on a GPU")
        return _plain_torch(project(features, projection_dim, seed), n_select, start_points, seed, show_progress)
    bank = _as_bank(features, projection_dim, seed)
    return torch.from_numpy(select_coreset(bank, n_select, start_points, seed, show_progress, algorithm, stats))


def select_coreset(bank: np.ndarray, n_select: int, start_points: int = 10, seed: int = 0,
                   show_progress: bool = True, algorithm: str = "auto", stats: dict | None = None) -> np.ndarray:
    """Greedy k-center indices (int64 [n_select]) on an already projected, C-contiguous float32 bank [N, d]."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"coreset algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    n = len(bank)
    if n_select >= n:
        return np.arange(n, dtype=np.int64)
    if bank.shape[1] in _FAISS_SPECIAL_D:  # faiss has multi-row kernels for these: a zero column avoids them
        bank = np.pad(bank, ((0, 0), (0, 1)))
    kernel = _L2Kernel(bank.shape[1], _threads())
    try:
        min_d = _start_min_d(bank, kernel, start_points, seed)
        if algorithm == "plain":
            out = _plain(bank, min_d, n_select, kernel, show_progress)
            if stats is not None:
                stats.update(algorithm="plain", distances=n * n_select, full_passes=n_select)
            return out
        return _Accelerated(bank, min_d, n_select, kernel, stats).run(show_progress)
    finally:
        kernel.close()


def _plain(bank: np.ndarray, min_d: np.ndarray, n_select: int, kernel: _L2Kernel, show: bool) -> np.ndarray:
    """One distance pass over the whole bank per selection; preallocated buffers, no allocation in the loop."""
    selected = np.empty(n_select, dtype=np.int64)
    buf = np.empty(len(bank), dtype=np.float32)
    for i in progress(range(n_select), "coreset (plain)", show, unit="pt"):
        idx = int(np.argmax(min_d))  # first index of the maximum
        selected[i] = idx
        kernel.set_centre(bank[idx])
        np.minimum(min_d, kernel(buf, bank), out=min_d)
    return selected


def _plain_torch(bank: torch.Tensor, n_select: int, start_points: int, seed: int, show: bool) -> torch.Tensor:
    """The plain loop on a torch device (GPU): norm expansion, one mat-vec and an in-place minimum per step."""
    n = bank.shape[0]
    sq_norms = (bank * bank).sum(dim=1)  # [N]

    def sq_dists(c: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        torch.mv(bank, c, out=out)
        return out.mul_(-2.0).add_(sq_norms).add_(c.dot(c)).clamp_(min=0)

    g = torch.Generator(device="cpu").manual_seed(seed)
    starts = torch.randperm(n, generator=g)[: min(start_points, n)].tolist()
    buf = torch.empty(n, device=bank.device)
    min_d = torch.zeros(n, device=bank.device)
    for s in starts:
        min_d += sq_dists(bank[s], buf).sqrt_()
    min_d = (min_d / len(starts)).square_()
    selected = torch.empty(n_select, dtype=torch.long, device=bank.device)
    for i in progress(range(n_select), "coreset (plain)", show, unit="pt"):
        idx = torch.argmax(min_d)  # stays on the device: no sync per step
        selected[i] = idx
        torch.minimum(min_d, sq_dists(bank[idx], buf), out=min_d)
    return selected


class _Accelerated:
    """Greedy k-center with triangle-inequality pruning; bit-identical ``min_d`` to :func:`_plain`.

    Per point p: ``min_d[p]`` (exactly the plain loop's), an assigned centre slot ``assign[p]`` with its computed
    squared distance ``U[p]``, and ``thr[p] = (sqrt(U) + sqrt(min_d)) / sqrt(1 - theta)``. If a certified lower
    bound ``ell`` of d(c, centre of p) is >= thr[p], then d(p, c) >= sqrt(min_d / (1 - theta)), so the computed
    distance cannot be below ``min_d[p]`` and p is skipped. Clusters keep their members in one buffer, each
    cluster's segment sorted by a stored key >= thr (descending), so a step reads only the prefix of members
    with key > ell; members that moved to a newer cluster stay until the buffer is compacted (``assign`` says
    who belongs). R[j] >= every member's thr skips a whole cluster. ``argmax`` over ``min_d`` comes from
    per-block maxima (first block, then first index: the plain loop's tie-breaking).
    """

    _BLOCK = 64

    def __init__(self, bank: np.ndarray, min_d: np.ndarray, n_select: int, kernel: _L2Kernel,
                 stats: dict | None) -> None:
        n, d = bank.shape
        self.bank, self.n_select, self.kernel, self.stats = bank, n_select, kernel, stats
        # |computed - exact| <= theta * exact for a sum of d squared differences in float32, any order, FMA or not
        self.theta = 2.0 * (d + 4) * _U
        self.lo = 1.0 / math.sqrt(1.0 + self.theta) * (1 - _EPS64)  # sqrt(D) * lo <= true distance
        self.hi = 1.0 / math.sqrt(1.0 - self.theta) * (1 + _EPS64)  # true distance <= sqrt(D) * hi
        n_blocks = -(-n // self._BLOCK)
        self.min_d_pad = np.full(n_blocks * self._BLOCK, -np.inf, dtype=np.float32)
        self.min_d_pad[:n] = min_d
        self.min_d = self.min_d_pad[:n]
        self.block_max = self.min_d_pad.reshape(n_blocks, self._BLOCK).max(axis=1)
        self.centres = np.empty((n_select, d), dtype=np.float32)
        self.R = np.full(n_select, -np.inf)
        self.U = np.full(n, np.inf, dtype=np.float32)
        self.assign = np.zeros(n, dtype=np.int64)
        self.thr = np.empty(n)
        # cluster j's members: ids[start[j] : start[j] + length[j]], keys[i] = j * big - (key >= thr), ascending
        self.ids = np.empty(2 * n + 1024, dtype=np.int64)
        self.keys = np.empty(2 * n + 1024)
        self.used = 0
        self.big = 1.0
        self.start = np.zeros(n_select, dtype=np.int64)
        self.length = np.zeros(n_select, dtype=np.int64)
        self.dist_buf = np.empty(n, dtype=np.float32)
        self.row_buf: np.ndarray | None = None  # gathered rows, grown by doubling
        self.computed = 0
        self.last_compact = 0

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self, show: bool) -> np.ndarray:
        """Select ``n_select`` points. Dense steps (a full pass, like the plain loop) while the triangle
        inequality would prune little, which is checked every ``_CHECK`` steps; sparse steps after that."""
        n = len(self.bank)
        selected = np.empty(self.n_select, dtype=np.int64)
        sparse = False
        window = 0  # distances computed since the last mode check
        sparse_steps = switches_to_dense = 0
        for k in progress(range(self.n_select), "coreset (accelerated)", show, total=self.n_select, unit="pt"):
            if sparse:
                selected[k] = idx = self._argmax()
                window += self._sparse_step(k, idx)
                sparse_steps += 1
            else:
                selected[k] = idx = int(np.argmax(self.min_d))  # first index of the maximum, as the plain loop
                self._dense_step(k, idx)
                window += n
            if (k + 1) % _CHECK == 0:
                if not sparse and self._would_prune(k + 1):
                    self._compact(k + 1)
                    sparse = True
                elif sparse and window > _DENSE_FRACTION * n * _CHECK:
                    sparse = False  # pruning stopped paying off: full passes again (state stays valid)
                    switches_to_dense += 1
                elif sparse and (self.used > 2 * n or k + 1 - self.last_compact >= max(1024, k // 2)):
                    self._compact(k + 1)  # drop stale members, tighten keys and radii
                window = 0
        if self.stats is not None:
            self.stats.update(algorithm="accelerated", distances=int(self.computed), full_passes=self.computed / n,
                              sparse_steps=sparse_steps, switches_to_dense=switches_to_dense)
        return selected

    def _set_centre(self, k: int, idx: int) -> None:
        self.centres[k] = self.bank[idx]
        self.kernel.set_centre(self.bank[idx])

    def _dense_step(self, k: int, idx: int) -> None:
        """One full pass: exactly the plain loop's update, plus the assignment of points to centres."""
        self._set_centre(k, idx)
        dnew = self.kernel(self.dist_buf, self.bank)
        self.computed += len(self.bank)
        np.minimum(self.min_d, dnew, out=self.min_d)
        moved = dnew < self.U
        self.assign[moved] = k
        self.U[moved] = dnew[moved]

    def _would_prune(self, k: int) -> bool:
        """Would a sparse step for the last centre compute fewer than ``_SPARSE_FRACTION`` of the distances?"""
        self.thr[:] = self._threshold(slice(None))
        dcc = self.kernel(np.empty(k, dtype=np.float32), self.centres[:k])  # kernel centre = the last one
        ell = np.sqrt(dcc.astype(np.float64)) * self.lo
        return float(np.mean(ell[self.assign] < self.thr)) < _SPARSE_FRACTION

    def _compact(self, k: int) -> None:
        """Rebuild member segments (current members only, sorted by current thr), radii and block maxima."""
        n = len(self.assign)
        self.thr[:] = self._threshold(slice(None))
        order = np.lexsort((-self.thr, self.assign))  # by cluster, then thr descending
        counts = np.bincount(self.assign, minlength=k)
        self.big = 2.0 * float(self.thr.max()) + 1.0
        self.ids[:n] = order
        self.keys[:n] = self.assign[order] * self.big - self.thr[order]
        self.used = n
        self.length[:k] = counts
        self.start[:k] = np.cumsum(counts) - counts
        self.R[:k] = -np.inf
        nonempty = counts > 0
        self.R[:k][nonempty] = self.thr[order[self.start[:k][nonempty]]]
        self.block_max = self.min_d_pad.reshape(-1, self._BLOCK).max(axis=1)
        self.last_compact = k

    def _argmax(self) -> int:
        b = int(np.argmax(self.block_max))
        return b * self._BLOCK + int(np.argmax(self.min_d_pad[b * self._BLOCK : (b + 1) * self._BLOCK]))

    def _sparse_step(self, k: int, idx: int) -> int:
        """Distances only for points the triangle inequality cannot rule out; returns how many were computed."""
        assign, thr = self.assign, self.thr
        self._set_centre(k, idx)
        # 1. clusters whose centre may be close enough (certified lower bounds on centre distances)
        dcc = self.kernel(np.empty(k, dtype=np.float32), self.centres[:k])
        ell = np.sqrt(dcc.astype(np.float64)) * self.lo
        aff = np.flatnonzero(ell < self.R[:k])
        ell = ell[aff]
        # 2. the prefix of each affected cluster's segment with key > ell (a superset, by a few ulps)
        base = aff * self.big
        query = base - ell + 8 * np.spacing(base + self.big)
        starts = self.start[aff]
        ends = np.minimum(np.searchsorted(self.keys[: self.used], query, side="left"), starts + self.length[aff])
        lens = np.maximum(ends - starts, 0)
        seg = np.repeat(np.arange(len(aff)), lens)
        pos = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(len(seg))
        pts = self.ids[pos]
        rows = pts[(assign[pts] == aff[seg]) & (ell[seg] < thr[pts])]
        # 3. distances for those rows with the plain loop's kernel, in-place minimum
        dnew = self.kernel(self.dist_buf, self._gather(rows))
        self.computed += len(rows)
        old = self.min_d[rows]
        dec = dnew < old
        if dec.any():
            self.min_d[rows[dec]] = dnew[dec]
            blocks = np.unique(rows[dec] // self._BLOCK)
            self.block_max[blocks] = self.min_d_pad.reshape(-1, self._BLOCK)[blocks].max(axis=1)
        moved = dnew < self.U[rows]
        mv = rows[moved]
        assign[mv] = k
        self.U[mv] = dnew[moved]
        thr[rows] = self._threshold(rows)
        # 4. the new cluster: its members sorted by thr descending, appended to the buffer
        if self.used + len(mv) > len(self.ids):
            self._compact(k + 1)  # buffer full: rebuild it, the new cluster included
            return len(rows)
        mv = mv[np.argsort(-thr[mv], kind="stable")]
        m = len(mv)
        self.ids[self.used : self.used + m] = mv
        self.keys[self.used : self.used + m] = k * self.big - thr[mv]
        self.start[k], self.length[k] = self.used, m
        self.R[k] = thr[mv[0]] if m else -np.inf
        self.used += m
        return len(rows)

    # ---- helpers -------------------------------------------------------------------------------------------
    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Bank rows ``rows`` copied into a reused contiguous buffer."""
        m = len(rows)
        if self.row_buf is None or len(self.row_buf) < m:
            size = max(m, 1024, 2 * (0 if self.row_buf is None else len(self.row_buf)))
            self.row_buf = np.empty((size, self.bank.shape[1]), dtype=np.float32)
        return np.take(self.bank, rows, axis=0, out=self.row_buf[:m])

    def _threshold(self, rows: np.ndarray | slice) -> np.ndarray:
        return (np.sqrt(self.U[rows].astype(np.float64)) + np.sqrt(self.min_d[rows].astype(np.float64))) * self.hi
