"""Choose a method's map kind per run from normal data only.

A map kind that assumes aligned objects (e.g. per-pixel standardisation against held-out normal images) helps where
every object sits in the same place and turns maps into noise where it does not. Which holds is a property of the
category, so it is decided per run: synthetic anomalies are pasted into held-out normal images, and each candidate
map kind is scored on them with its statistics fitted on the *other* half of the held-out images (two-fold
cross-fitting, so no image is scored against statistics that include it). The score is the mean of the pixel AUROC
(the map localises) and the image AUROC (the map's image score separates the pasted images from the clean ones):
a run reports both, and pixel AUROC alone once chose a map that localised slightly better and ranked images 16
points worse (VAE-energy on transistor). The test set is never used.

A method supplies two callables: ``fit_stats(images) -> stats`` and ``maps(images, stats) -> {kind: [N, H, W]}``;
images are [N, C, H, W] in [0, 1] at the resolution the method works at, maps at the resolution they are
evaluated at (masks are resized to it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import image_auroc, pixel_auroc

CRITERION = ("mean of pixel AUROC and image AUROC on synthetic anomalies pasted into held-out normal images "
             "(2-fold cross-fitted statistics)")


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float, theta: float) -> torch.Tensor:
    """Bool mask [h, w] of a rotated ellipse."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    y, x = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u, v = x * c + y * s, -x * s + y * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def paste_anomalies(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, C, H, W] in [0, 1] -> (copies with one synthetic anomaly each [N, C, H, W], masks [N, H, W] bool).

    Alternating kinds: a patch cut from another image of the set (CutPaste-like: normal content in the wrong
    place), and an ellipse of coarse random colour noise blended at 50-100 %. Sides are 8-20 % of the image,
    anywhere in it; deterministic for a given ``seed``.
    """
    n, c, h, w = images.shape
    g = np.random.default_rng(seed)
    out, masks = images.clone(), torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        ry, rx = g.uniform(0.04, 0.10, size=2) * (h, w)
        cy, cx = g.uniform(ry, h - ry), g.uniform(rx, w - rx)
        m = _ellipse(h, w, cy, cx, max(ry, 1.0), max(rx, 1.0), g.uniform(0, np.pi))
        if i % 2 == 0 and n > 1:  # content of another image, taken from another place
            j = int((i + g.integers(1, n)) % n)
            sy, sx = int(g.integers(-h // 4, h // 4 + 1)), int(g.integers(-w // 4, w // 4 + 1))
            src = torch.roll(images[j], shifts=(sy, sx), dims=(1, 2))
            alpha = 1.0
        else:
            cells = (max(1, h // 8), max(1, w // 8))
            noise = torch.from_numpy(g.uniform(0, 1, size=(1, c, *cells)).astype(np.float32))
            src = F.interpolate(noise, size=(h, w), mode="nearest")[0]
            alpha = float(g.uniform(0.5, 1.0))
        blend = m.to(images.dtype) * alpha  # [H, W]
        out[i] = images[i] * (1 - blend) + src * blend
        masks[i] = m
    return out, masks


@dataclass
class Selection:
    """The kind chosen, the criterion and every candidate's validation figures (for the run record)."""

    chosen: str
    criterion: str = CRITERION
    score: dict[str, float] = field(default_factory=dict)  # what is compared: mean of the two AUROCs
    pixel_auroc: dict[str, float] = field(default_factory=dict)
    image_auroc: dict[str, float] = field(default_factory=dict)
    n_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()} | {
            "score": {k: round(v, 4) for k, v in self.score.items()},
            "pixel_auroc": {k: round(v, 4) for k, v in self.pixel_auroc.items()},
            "image_auroc": {k: round(v, 4) for k, v in self.image_auroc.items()}}


def _resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.numpy()
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].numpy() > 0.5


def choose_map_kind(images: torch.Tensor, candidates: list[str], fit_stats: Callable[[torch.Tensor], Any],
                    maps: Callable[[torch.Tensor, Any], dict[str, np.ndarray]],
                    image_score: Callable[[np.ndarray], np.ndarray], seed: int,
                    margin: float = 0.0) -> Selection:
    """Score each of ``candidates`` on synthetic anomalies in the held-out normal ``images`` [N, C, H, W] in [0, 1]
    and return the best by the mean of pixel and image AUROC. Each half of the images is scored with statistics
    fitted on the other half.
    A candidate must beat the first one (the method's default) by more than ``margin`` to replace it."""
    n = images.shape[0]
    if n < 4:
        return Selection(chosen=candidates[0], criterion="fewer than 4 held-out images: the default kind", n_images=n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 31337))
    halves = (perm[: n // 2].sort().values, perm[n // 2:].sort().values)
    defected, masks = paste_anomalies(images, seed)
    clean_maps: dict[str, list[np.ndarray]] = {}
    bad_maps: dict[str, list[np.ndarray]] = {}
    mask_parts = []
    for fit_idx, val_idx in (halves, halves[::-1]):
        stats = fit_stats(images[fit_idx])
        for store, batch in ((clean_maps, images[val_idx]), (bad_maps, defected[val_idx])):
            for kind, m in maps(batch, stats).items():
                store.setdefault(kind, []).append(np.asarray(m, dtype=np.float64))
        mask_parts.append(masks[val_idx])
    sel = Selection(chosen=candidates[0], n_images=n)
    for kind in candidates:
        bad = np.concatenate(bad_maps[kind])  # [N, H, W]
        clean = np.concatenate(clean_maps[kind])
        gt = _resize_masks(torch.cat(mask_parts), bad.shape[-2:])
        if not np.isfinite(bad).all() or not np.isfinite(clean).all():
            continue
        sel.pixel_auroc[kind] = float(pixel_auroc(bad, gt))
        scores = np.concatenate([image_score(clean), image_score(bad)])
        sel.image_auroc[kind] = float(image_auroc(scores, np.r_[np.zeros(len(clean)), np.ones(len(bad))]))
        sel.score[kind] = 0.5 * (sel.pixel_auroc[kind] + sel.image_auroc[kind])
    if sel.score:
        best = max(sel.score, key=sel.score.get)
        default = sel.score.get(candidates[0], -np.inf)
        sel.chosen = best if sel.score[best] > default + margin else candidates[0]
    return sel
