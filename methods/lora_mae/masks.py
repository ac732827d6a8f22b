"""K deterministic masks that together hide every patch exactly once (inference).

``tiles`` (default): mask k hides the patches at offset k of a repeating kh x kw tile, K split as kh * kw with kh
the largest divisor of K not above sqrt(K) (K=4 -> 2x2, K=2 -> 1x2, K=9 -> 3x3), so no two hidden patches touch
for K=4 and every hidden patch has visible neighbours on all sides.
``stripes``: the reference code's layout, mask k hides the patches whose row-major index is k modulo K, i.e. every
K-th patch column when the grid width is a multiple of K (checked).
Each mask hides 1/K of the patches.
"""

from __future__ import annotations

import math

import torch

from adbench.data.errors import ConfigError

MASK_LAYOUTS = ("tiles", "stripes")


def tile_shape(num_masks: int) -> tuple[int, int]:
    """(kh, kw) with kh * kw = K and kh the largest divisor of K that is at most sqrt(K)."""
    if num_masks < 1:
        raise ConfigError(f"method.inference.num_masks={num_masks} must be >= 1")
    kh = max(d for d in range(1, math.isqrt(num_masks) + 1) if num_masks % d == 0)
    return kh, num_masks // kh


def interleaved_masks(grid: tuple[int, int], num_masks: int, layout: str = "tiles") -> torch.Tensor:
    """Boolean hidden-patch masks [K, h*w] (row-major patches); each patch is True in exactly one row."""
    h, w = grid
    if layout not in MASK_LAYOUTS:
        raise ConfigError(f"method.inference.mask_layout={layout!r} must be one of {', '.join(MASK_LAYOUTS)}")
    if layout == "stripes":
        kh, kw = 1, num_masks  # index % K == k on a grid whose width is a multiple of K: column stripes
    else:
        kh, kw = tile_shape(num_masks)
    if h % kh or w % kw:
        raise ConfigError(
            f"method.inference.num_masks={num_masks} with mask_layout={layout} tiles the patch grid in {kh}x{kw} "
            f"blocks, but the grid is {h}x{w} patches (not divisible); pick num_masks whose tile divides the grid "
            f"(e.g. 4 for even sides) or change the input size / patch size"
        )
    rows = torch.arange(h)[:, None] % kh  # [h, 1]
    cols = torch.arange(w)[None, :] % kw  # [1, w]
    slot = (rows * kw + cols).reshape(-1)  # [h*w], which mask hides each patch
    return slot[None, :] == torch.arange(num_masks)[:, None]  # [K, h*w]


def visible_indices(hidden: torch.Tensor) -> torch.Tensor:
    """Sorted indices [L_keep] of the patches a hidden mask [L] leaves visible."""
    return torch.nonzero(~hidden, as_tuple=False).reshape(-1)
