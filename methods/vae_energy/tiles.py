"""Cut square images into crops and stitch per-crop maps back (overlaps averaged)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(side: int, crop: int, stride: int) -> None:
    if crop > side or stride < 1 or (side - crop) % stride != 0:
        raise ValueError(f"crop={crop}, stride={stride} do not tile a side of {side} exactly")


def tile(x: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """[B, C, R, R] -> [B*T, C, crop, crop], crops in row-major order per image (T per image)."""
    b, c, r, _ = x.shape
    _check(r, crop, stride)
    cols = F.unfold(x, kernel_size=crop, stride=stride)  # [B, C*crop*crop, T]
    t = cols.shape[-1]
    return cols.transpose(1, 2).reshape(b * t, c, crop, crop)


def stitch(tiles: torch.Tensor, side: int, stride: int) -> torch.Tensor:
    """Inverse of :func:`tile` for maps: [B*T, C, crop, crop] -> [B, C, side, side], overlaps averaged."""
    n, c, crop, _ = tiles.shape
    _check(side, crop, stride)
    per_side = (side - crop) // stride + 1
    t = per_side * per_side
    b = n // t
    cols = tiles.reshape(b, t, c * crop * crop).transpose(1, 2)  # [B, C*crop*crop, T]
    summed = F.fold(cols, output_size=(side, side), kernel_size=crop, stride=stride)
    counts = F.fold(torch.ones_like(cols[:1, : crop * crop]), output_size=(side, side), kernel_size=crop, stride=stride)
    return summed / counts
