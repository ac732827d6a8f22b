"""The reference code's light training augmentation on in-memory normalised images.

The reference resizes each image to 1.035 x the input size, takes a random input-size crop (a few pixels of
jiggle) and jitters brightness and saturation by at most 2 %. Here the decoded images [N, 3, H, W] are resized
once by ``resize_factor`` and every batch draws its crops and jitter factors from the training generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from adbench.data.transforms import denormalize, normalize


def enlarge(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Images [N, 3, H, W] resized bicubically to round(factor * H) x round(factor * W); factor <= 1: unchanged."""
    h, w = images.shape[-2:]
    size = (round(h * factor), round(w * factor))
    if factor <= 1.0 or size == (h, w):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False)


def random_crops(images: torch.Tensor, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """One uniformly placed ``size`` crop per image of [B, 3, H', W'] -> [B, 3, h, w]."""
    h, w = size
    big_h, big_w = images.shape[-2:]
    if (big_h, big_w) == (h, w):
        return images
    tops = torch.randint(0, big_h - h + 1, (images.shape[0],), generator=gen).tolist()
    lefts = torch.randint(0, big_w - w + 1, (images.shape[0],), generator=gen).tolist()
    return torch.stack([img[:, t:t + h, l:l + w] for img, t, l in zip(images, tops, lefts)])


def colour_jitter(images: torch.Tensor, brightness: float, saturation: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness then saturation scaled by factors uniform in [1 - a, 1 + a] per image, on normalised [B, 3, H, W]."""
    if brightness <= 0 and saturation <= 0:
        return images
    b = images.shape[0]
    fb = 1.0 + brightness * (2 * torch.rand(b, generator=gen) - 1)  # [B]
    fs = 1.0 + saturation * (2 * torch.rand(b, generator=gen) - 1)  # [B]
    raw = denormalize(images)  # [B, 3, H, W] in [0, 1]
    out = torch.stack([TF.adjust_saturation(TF.adjust_brightness(img, float(kb)), float(ks))
                       for img, kb, ks in zip(raw, fb, fs)])
    return normalize(out).to(images.dtype)
