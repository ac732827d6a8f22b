"""CutPaste augmentations (Li et al., CVPR 2021) on images in [0, 1]: CutPaste, CutPaste-Scar, colour jitter.

Every random draw comes from an explicit ``torch.Generator`` so a training step is reproducible from its seed.
Per-image functions return ``(image, info)`` where ``info`` records the geometry they drew (used by the tests);
:func:`make_views` builds the labelled 2- or 3-way batch of a training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import ColorJitter
from torchvision.transforms.v2 import functional as TF

VARIANTS = ("normal", "scar", "3way")
_MAX_TRIES = 1000

@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of every augmentation; defaults are the paper's."""

    image_jitter: float = 0.1  # whole-image brightness / contrast / saturation / hue jitter before CutPaste
    patch_jitter: float = 0.1  # jitter of the pasted piece
    translate: float = 0.0  # whole-image random shift, up to this fraction of the side (reflect padded)
    area_ratio: tuple[float, float] = (0.02, 0.15)
    aspect_ratio: tuple[float, float] = (0.3, 3.3)  # drawn from (lo, 1) or (1, hi) with equal probability
    scar_width: tuple[int, int] = (2, 16)
    scar_length: tuple[int, int] = (10, 25)
    scar_angle: tuple[float, float] = (-45.0, 45.0)


def _uniform(gen: torch.Generator, lo: float, hi: float, n: int | None = None) -> torch.Tensor | float:
    u = torch.rand(n if n is not None else 1, generator=gen, dtype=torch.float64)
    v = lo + (hi - lo) * u
    return v if n is not None else float(v)


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (both inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(s, 0.5))`` applied to each
    image of ``x`` [B, 3, H, W] in [0, 1] with its own random factors and order, as the paper's and the seed
    code's jitter. The draws come from ``gen`` (torchvision draws from the global RNG, forked here)."""
    if strength <= 0:
        return x
    jitter = ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=min(strength, 0.5))
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([jitter(img) for img in x]).clamp_(0, 1)


def random_translate(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Shift each image of ``x`` [B, 3, H, W] by up to ``fraction`` of its side, reflect-padded."""
    if fraction <= 0:
        return x
    _, _, h, w = x.shape
    pad = int(round(fraction * min(h, w)))
    if pad == 0:
        return x
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")  # [B, 3, H+2p, W+2p]
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        dy, dx = _randint(gen, 0, 2 * pad), _randint(gen, 0, 2 * pad)
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def sample_cutpaste_box(h: int, w: int, cfg: AugmentConfig, gen: torch.Generator) -> tuple[int, int]:
    """(box_h, box_w) of a CutPaste rectangle: area ratio within ``cfg.area_ratio`` of h*w, aspect w/h in
    (lo, 1) U (1, hi). Drawn as in the paper, then rounded; a rounded box that leaves the ranges is redrawn."""
    (a_lo, a_hi), (r_lo, r_hi) = cfg.area_ratio, cfg.aspect_ratio
    for _ in range(_MAX_TRIES):
        area = _uniform(gen, a_lo, a_hi) * h * w
        aspect = _uniform(gen, r_lo, 1.0) if torch.rand(1, generator=gen).item() < 0.5 else _uniform(gen, 1.0, r_hi)
        bw = int(round(math.sqrt(area * aspect)))
        bh = int(round(math.sqrt(area / aspect)))
        if not (1 <= bh <= h and 1 <= bw <= w) or bh == bw:
            continue
        if a_lo <= bh * bw / (h * w) <= a_hi and r_lo < bw / bh < r_hi:
            return bh, bw
    raise ValueError(f"cannot draw a CutPaste box in a {h}x{w} image with area_ratio={cfg.area_ratio}, "
                     f"aspect_ratio={cfg.aspect_ratio}")


def _two_positions(h: int, w: int, bh: int, bw: int, gen: torch.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
    """A source and a different target top-left corner for a bh x bw box (equal only if the box fills the image)."""
    src = (_randint(gen, 0, h - bh), _randint(gen, 0, w - bw))
    dst = src
    for _ in range(_MAX_TRIES):
        dst = (_randint(gen, 0, h - bh), _randint(gen, 0, w - bw))
        if dst != src or (h == bh and w == bw):
            break
    return src, dst


def cutpaste(img: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """CutPaste of one image [3, H, W] in [0, 1]: a jittered rectangle cut at ``src`` is pasted at ``dst``."""
    _, h, w = img.shape
    bh, bw = sample_cutpaste_box(h, w, cfg, gen)
    (y1, x1), (y2, x2) = _two_positions(h, w, bh, bw, gen)
    piece = color_jitter(img[None, :, y1 : y1 + bh, x1 : x1 + bw], cfg.patch_jitter, gen)[0]  # [3, bh, bw]
    out = img.clone()
    out[:, y2 : y2 + bh, x2 : x2 + bw] = piece
    mask = torch.zeros(h, w, dtype=torch.bool, device=img.device)
    mask[y2 : y2 + bh, x2 : x2 + bw] = True
    return out, {"box": (bh, bw), "src": (y1, x1), "dst": (y2, x2), "mask": mask}


def sample_scar(cfg: AugmentConfig, gen: torch.Generator) -> tuple[int, int, float]:
    """(width, length, angle in degrees) of a scar: integer width and length in the inclusive ranges."""
    width = _randint(gen, *cfg.scar_width)
    length = _randint(gen, *cfg.scar_length)
    angle = _uniform(gen, *cfg.scar_angle)
    return width, length, angle


def scar(img: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """CutPaste-Scar of one image [3, H, W]: a thin width x length strip, jittered, rotated, pasted elsewhere."""
    _, h, w = img.shape
    width, length, angle = sample_scar(cfg, gen)
    width, length = min(width, w), min(length, h)
    y1, x1 = _randint(gen, 0, h - length), _randint(gen, 0, w - width)
    piece = color_jitter(img[None, :, y1 : y1 + length, x1 : x1 + width], cfg.patch_jitter, gen)[0]  # [3, L, W]
    # strip and its mask rotate together, nearest-neighbour (as PIL's RGBA rotate in the seed code): every pasted
    # pixel is a pixel of the strip, none mixed with the zero fill
    both = torch.cat([piece, torch.ones(1, length, width, dtype=piece.dtype, device=img.device)])  # [4, L, W]
    both = TF.rotate(both, angle, interpolation=TF.InterpolationMode.NEAREST, expand=True, fill=0.0)
    piece, keep = both[:3], both[3] > 0.5  # [3, h', w'], [h', w']
    ph, pw = keep.shape
    if ph > h or pw > w:  # only for images smaller than a rotated scar
        piece, keep = piece[:, :h, :w], keep[:h, :w]
        ph, pw = keep.shape
    y2, x2 = _randint(gen, 0, h - ph), _randint(gen, 0, w - pw)
    out = img.clone()
    region = out[:, y2 : y2 + ph, x2 : x2 + pw]
    out[:, y2 : y2 + ph, x2 : x2 + pw] = torch.where(keep, piece, region)
    mask = torch.zeros(h, w, dtype=torch.bool, device=img.device)
    mask[y2 : y2 + ph, x2 : x2 + pw] = keep
    return out, {"width": width, "length": length, "angle": angle, "src": (y1, x1), "dst": (y2, x2), "mask": mask}


def make_views(x: torch.Tensor, variant: str, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch from normal images ``x`` [B, 3, H, W] in [0, 1].

    Whole-image jitter (and shift) first, then the classes: 0 = the image, 1 = CutPaste (``normal``, ``3way``)
    or scar (``scar``), 2 = scar (``3way``). Returns views [K*B, 3, H, W] and labels [K*B].
    """
    if variant not in VARIANTS:
        from adbench.data.errors import ConfigError

        raise ConfigError(f"method.variant={variant!r}; choose one of {', '.join(VARIANTS)}")
    x = random_translate(color_jitter(x, cfg.image_jitter, gen), cfg.translate, gen)
    ops = {"normal": [cutpaste], "scar": [scar], "3way": [cutpaste, scar]}[variant]
    views = [x] + [torch.stack([op(img, cfg, gen)[0] for img in x]) for op in ops]
    labels = torch.arange(len(views)).repeat_interleave(x.shape[0])  # [K*B]
    return torch.cat(views), labels.to(x.device)
