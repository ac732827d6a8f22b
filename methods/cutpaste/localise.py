"""Dense patch scoring for localisation (paper section 4.2): patches at a stride -> scores -> pixel map.

A pixel's score is the mean score of every patch that covers it (receptive-field upsampling), followed by
a Gaussian blur. Images whose side does not fit the stride are reflect-padded on the bottom/right.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def grid_padding(side: int, size: int, stride: int) -> int:
    """Pixels to add to ``side`` so that patches of ``size`` at ``stride`` end exactly at the border."""
    if side < size:
        return size - side
    rest = (side - size) % stride
    return 0 if rest == 0 else stride - rest


def pad_for_grid(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """Reflect-pad ``x`` [B, C, H, W] on the bottom/right so the patch grid covers it."""
    ph, pw = grid_padding(x.shape[-2], size, stride), grid_padding(x.shape[-1], size, stride)
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def grid_shape(h: int, w: int, size: int, stride: int) -> tuple[int, int]:
    """Number of patch rows and columns over an h x w image (after padding)."""
    hp, wp = h + grid_padding(h, size, stride), w + grid_padding(w, size, stride)
    return (hp - size) // stride + 1, (wp - size) // stride + 1


def extract_patches(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """All patches of one image ``x`` [C, H, W] in row-major grid order -> [gh*gw, C, size, size]."""
    xp = pad_for_grid(x[None], size, stride)[0]  # [C, H', W']
    p = xp.unfold(1, size, stride).unfold(2, size, stride)  # [C, gh, gw, size, size]
    c, gh, gw = p.shape[:3]
    return p.permute(1, 2, 0, 3, 4).reshape(gh * gw, c, size, size)


def patches_at(x: torch.Tensor, size: int, stride: int, index: torch.Tensor) -> torch.Tensor:
    """The patches of ``x`` [C, H, W] at flat grid positions ``index`` [k] -> [k, C, size, size]."""
    xp = pad_for_grid(x[None], size, stride)[0]
    gw = (xp.shape[-1] - size) // stride + 1
    rows, cols = (index // gw) * stride, (index % gw) * stride
    return torch.stack([xp[:, r : r + size, c : c + size] for r, c in zip(rows.tolist(), cols.tolist())])


def scores_to_map(scores: torch.Tensor, image_hw: tuple[int, int], size: int, stride: int,
                  sigma: float = 4.0) -> np.ndarray:
    """Patch scores [B, gh, gw] -> anomaly maps [B, H, W]: mean over covering patches, then Gaussian blur."""
    b, gh, gw = scores.shape
    h, w = image_hw
    hp, wp = h + grid_padding(h, size, stride), w + grid_padding(w, size, stride)
    cols = scores.float().reshape(b, 1, gh * gw).expand(b, size * size, gh * gw)  # [B, size*size, L]
    total = F.fold(cols, (hp, wp), kernel_size=size, stride=stride)  # [B, 1, H', W']
    count = F.fold(torch.ones_like(cols[:1]), (hp, wp), kernel_size=size, stride=stride)  # [1, 1, H', W']
    maps = (total / count)[:, 0, :h, :w].numpy()  # [B, H, W]
    if sigma > 0:
        maps = np.stack([ndimage.gaussian_filter(m, sigma=sigma) for m in maps])
    return maps.astype(np.float32)
