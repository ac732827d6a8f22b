"""K deterministic interleaved masks: mask k hides the patches at offset k of a repeating kh x kw tile.

K is split as kh * kw with kh the largest divisor of K not above sqrt(K) (K=4 -> 2x2, K=2 -> 1x2, K=9 -> 3x3).
Every patch is hidden by exactly one mask, and each mask hides 1/K of the patches when the grid sides are
multiples of kh and kw (checked).
"""

from __future__ import annotations

import math

import torch

from adbench.data.errors import ConfigError


def tile_shape(num_masks: int) -> tuple[int, int]:
    """(kh, kw) with kh * kw = K and kh the largest divisor of K that is at most sqrt(K)."""
    if num_masks < 1:
        raise ConfigError(f"method.inference.num_masks={num_masks} must be >= 1")
    kh = max(d for d in range(1, math.isqrt(num_masks) + 1) if num_masks % d == 0)
    return kh, num_masks // kh


def interleaved_masks(grid: tuple[int, int], num_masks: int) -> torch.Tensor:
    """Boolean hidden-patch masks [K, h*w] (row-major patches); each patch is True in exactly one row."""
    h, w = grid
    kh, kw = tile_shape(num_masks)
    if h % kh or w % kw:
        raise ConfigError(
            f"method.inference.num_masks={num_masks} tiles the patch grid in {kh}x{kw} blocks, but the grid is "
            f"{h}x{w} patches (not divisible); pick num_masks whose tile divides the grid (e.g. 4 for even sides) "
            f"or change the input size / patch size"
        )
    rows = torch.arange(h)[:, None] % kh  # [h, 1]
    cols = torch.arange(w)[None, :] % kw  # [1, w]
    slot = (rows * kw + cols).reshape(-1)  # [h*w], which mask hides each patch
    return slot[None, :] == torch.arange(num_masks)[:, None]  # [K, h*w]


def visible_indices(hidden: torch.Tensor) -> torch.Tensor:
    """Sorted indices [L_keep] of the patches a hidden mask [L] leaves visible."""
    return torch.nonzero(~hidden, as_tuple=False).reshape(-1)
