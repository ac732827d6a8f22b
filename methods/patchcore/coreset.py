"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling), vectorised torch."""

from __future__ import annotations

import math

import torch

from adbench.utils import progress


def _sq_dists(bank: torch.Tensor, sq_norms: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Squared distances of every row of ``bank`` [N, d] to ``centre`` [d] -> [N] (one mat-vec)."""
    return (sq_norms - 2.0 * (bank @ centre) + centre.dot(centre)).clamp_(min=0)


def project(features: torch.Tensor, dim: int | None, seed: int = 0, chunk: int = 65536) -> torch.Tensor:
    """Random linear projection to ``dim`` (Johnson-Lindenstrauss), chunked; None or >= D keeps the features."""
    n, d = features.shape
    if dim is None or dim >= d:
        return features.float().contiguous()
    g = torch.Generator(device="cpu").manual_seed(seed)
    # same distribution as an nn.Linear(d, dim, bias=False) default init: U(-1/sqrt(d), 1/sqrt(d))
    bound = 1.0 / math.sqrt(d)
    weight = (torch.rand(d, dim, generator=g) * 2 - 1).mul_(bound).to(features.device)
    out = torch.empty(n, dim, device=features.device, dtype=torch.float32)
    for i in range(0, n, chunk):
        torch.matmul(features[i : i + chunk].float(), weight, out=out[i : i + chunk])
    return out


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int | None = 128, start_points: int = 10,
                   seed: int = 0, show_progress: bool = True) -> torch.Tensor:
    """Indices [n_select] of an approximate greedy k-center coreset of ``features`` [N, D].

    As in PatchCore's reference sampler: project to ``projection_dim`` (None = exact, no projection), start from
    the mean distance to ``start_points`` random points, then repeatedly take the point farthest from the
    selected set. Each step is one mat-vec over the contiguous projected bank and an in-place minimum.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n, device=features.device)
    bank = project(features, projection_dim, seed)  # [N, d]
    sq_norms = (bank * bank).sum(dim=1)  # [N]
    g = torch.Generator(device="cpu").manual_seed(seed)
    starts = torch.randperm(n, generator=g)[: min(start_points, n)].tolist()
    min_d = torch.zeros(n, device=bank.device)
    for s in starts:
        min_d += _sq_dists(bank, sq_norms, bank[s]).sqrt_()
    min_d = (min_d / len(starts)).square_()  # squared mean distance to the starting points
    selected = torch.empty(n_select, dtype=torch.long, device=bank.device)
    buf = torch.empty(n, device=bank.device)
    for i in progress(range(n_select), "coreset", show_progress, unit="pt"):
        idx = int(torch.argmax(min_d))
        selected[i] = idx
        c = bank[idx]
        torch.mv(bank, c, out=buf)  # buf = bank @ c
        buf.mul_(-2.0).add_(sq_norms).add_(c.dot(c)).clamp_(min=0)
        torch.minimum(min_d, buf, out=min_d)
    return selected
