"""CutPaste as one ONNX-exportable module: image model + Gaussian density for the score, the patch model
scored densely for the map.

The Mahalanobis distance runs in float64 as in :class:`~methods.cutpaste.density.GaussianDensity`. Patches
are the reflect-padded image unfolded at the patch stride; the per-pixel mean over covering patches is a
transposed convolution of the patch scores with a ones kernel divided by the (fixed) coverage count.
``density=kde`` is not exportable (scikit-learn's kernel density has no ONNX graph here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adbench.export import GaussianBlur, NotExportable, register_exporter

from .localise import grid_padding


class Mahalanobis(nn.Module):
    """Embeddings [N, D] -> Mahalanobis distances [N] (float32) to a fitted Gaussian (float64 inside)."""

    def __init__(self, mean: torch.Tensor, precision: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.double().reshape(1, -1))
        self.register_buffer("precision", precision.double())

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        xc = e.double() - self.mean  # [N, D]
        return ((xc @ self.precision) * xc).sum(1).clamp(min=0).sqrt().float()


class CutPasteGraph(nn.Module):
    """Normalised images [B, 3, H, W] -> (image scores [B], anomaly maps [B, H, W]) of a fitted CutPaste."""

    def __init__(self, image_net: nn.Module, image_density: Mahalanobis, patch_net: nn.Module | None,
                 patch_density: Mahalanobis | None, where: str, normalize: bool, size: tuple[int, int],
                 patch_size: int, stride: int, sigma: float) -> None:
        super().__init__()
        self.image_net, self.image_density = image_net, image_density
        self.patch_net, self.patch_density = patch_net, patch_density
        self.where, self.normalize, self.size = where, normalize, tuple(size)
        self.p, self.stride = patch_size, stride
        h, w = self.size
        self.pad = (grid_padding(h, patch_size, stride), grid_padding(w, patch_size, stride))
        self.pad_mode = "reflect" if self.pad[0] < h and self.pad[1] < w else "replicate"
        self.grid = ((h + self.pad[0] - patch_size) // stride + 1, (w + self.pad[1] - patch_size) // stride + 1)
        self.register_buffer("ones", torch.ones(1, 1, patch_size, patch_size))
        count = F.conv_transpose2d(torch.ones(1, 1, *self.grid), self.ones, stride=stride)  # [1, 1, H', W']
        self.register_buffer("count", count)
        self.blur = GaussianBlur(sigma, self.size) if sigma > 0 and patch_net is not None else None

    def _embed(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        e = net.embed(x, self.where).float()
        return F.normalize(e, dim=1) if self.normalize else e

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = self.image_density(self._embed(self.image_net, x))  # [B]
        b = x.shape[0]
        h, w = self.size
        if self.patch_net is None:
            return score, score.reshape(b, 1, 1).expand(b, h, w)
        xp = F.pad(x, (0, self.pad[1], 0, self.pad[0]), mode=self.pad_mode) if any(self.pad) else x
        p, s = self.p, self.stride
        patches = xp.unfold(2, p, s).unfold(3, p, s)  # [B, 3, gh, gw, p, p]
        gh, gw = self.grid
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b * gh * gw, 3, p, p)
        grid = self.patch_density(self._embed(self.patch_net, patches)).reshape(b, 1, gh, gw)
        total = F.conv_transpose2d(grid, self.ones, stride=s)  # [B, 1, H', W']: sum over covering patches
        maps = (total / self.count)[:, :, :h, :w]
        if self.blur is not None:
            maps = self.blur(maps)
        return score, maps[:, 0]


def _mahalanobis(density) -> Mahalanobis:
    if getattr(density, "name", "") == "gde":
        return Mahalanobis(density.mean, density.precision)
    if getattr(density, "name", "") == "gde_sklearn":
        return Mahalanobis(torch.from_numpy(density.model.location_), torch.from_numpy(density.model.precision_))
    raise NotExportable(f"cutpaste with method.density={getattr(density, 'name', '?')} is not exportable because "
                        f"the kernel density estimate runs in scikit-learn; train with method.density=gde to export")


@register_exporter("cutpaste")
def export_module(method) -> nn.Module:
    """The :class:`CutPasteGraph` of a loaded :class:`~methods.cutpaste.CutPaste`."""
    cfg = method.cfg
    h, w = method.ctx.image_size
    patch = method.patch_net is not None
    return CutPasteGraph(
        method.image_net.cpu().eval(), _mahalanobis(method.image_density),
        method.patch_net.cpu().eval() if patch else None, _mahalanobis(method.patch_density) if patch else None,
        str(cfg.embedding), bool(cfg.normalize_embeddings), (int(h), int(w)), int(cfg.patch.size),
        int(cfg.patch.stride), float(cfg.patch.sigma))
