"""VAE-energy's plain reconstruction map |x0 - f(x0)| as one ONNX-exportable module.

The energy-based projection (``method.score=projection``) takes gradient steps through the VAE with autograd,
which has no ONNX graph: such checkpoints export the reconstruction map of the same VAE, without a threshold
(theirs was calibrated on projection scores). The antialiased resize to the model side is a fixed matrix
product per axis; texture crops are fixed slices, stitched back by padding and averaging; with
``method.standardize`` the map is z-scored per pixel with the checkpoint's held-out statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from adbench.export import GaussianBlur, image_scores, register_exporter, resize_matrix


class VAEReconstructionGraph(nn.Module):
    """Normalised images [B, 3, H, W] -> (image scores [B], reconstruction maps [B, H, W])."""

    def __init__(self, vae: nn.Module, gray: bool, side: int, crop: int, stride: int, texture: bool,
                 size: tuple[int, int], sigma: float, how: str, topk: int,
                 norm: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.gray, self.side, self.crop, self.texture = gray, side, crop, texture
        self.size, self.how, self.topk = tuple(size), how, topk
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.resize = tuple(size) != (side, side)
        self.register_buffer("a_h", resize_matrix(size[0], side, antialias=True))  # [side, H]
        self.register_buffer("a_w_t", resize_matrix(size[1], side, antialias=True).t().contiguous())  # [W, side]
        starts = list(range(0, side - crop + 1, stride)) if texture else [0]
        self.offsets = [(y, x) for y in starts for x in starts]  # row-major, as methods/vae_energy/tiles.py
        counts = torch.zeros(1, 1, side, side)
        for y, x in self.offsets:
            counts[..., y : y + crop, x : x + crop] += 1
        self.register_buffer("counts", counts)
        self.blur = GaussianBlur(sigma, self.size) if sigma > 0 else None
        self.standardize = norm is not None  # per-pixel z-score with held-out normal statistics [H, W]
        if norm is not None:
            self.register_buffer("norm_mean", norm[0].float())
            self.register_buffer("norm_std", norm[1].float())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x * self.std + self.mean).clamp(0, 1)  # [B, 3, H, W], as adbench.data.denormalize
        if self.gray:
            x = x.mean(dim=1, keepdim=True)
        if self.resize:
            x = (self.a_h @ x @ self.a_w_t).clamp(0, 1)  # [B, C, side, side]
        c, s = self.crop, self.side
        crops = torch.cat([x[..., y : y + c, ox : ox + c] for y, ox in self.offsets]) if self.texture else x
        rec = self.vae.decode(self.vae.encode(crops)[0])
        err = (crops - rec).abs().mean(dim=1, keepdim=True)  # [T*B, 1, c, c], tile-major
        if self.texture:
            b = x.shape[0]
            m = sum(F.pad(err[i * b : (i + 1) * b], (ox, s - ox - c, y, s - y - c))
                    for i, (y, ox) in enumerate(self.offsets)) / self.counts
        else:
            m = err
        up = F.interpolate(m, size=self.size, mode="bilinear", align_corners=False)  # [B, 1, H, W]
        if self.blur is not None:
            up = self.blur(up)
        maps = up[:, 0]
        if self.standardize:
            maps = (maps - self.norm_mean) / self.norm_std
        return image_scores(maps, self.how, self.topk), maps


@register_exporter("vae_energy")
def export_module(method) -> nn.Module:
    """The :class:`VAEReconstructionGraph` of a loaded VAE-energy model."""
    cfg = method.cfg
    h, w = method.ctx.image_size
    graph = VAEReconstructionGraph(method.model.cpu().eval(), method.in_channels == 1, method._side,
                                   int(cfg.input_size), int(cfg.texture.stride), method.texture, (int(h), int(w)),
                                   float(cfg.smoothing_sigma), str(cfg.image_score), int(cfg.topk),
                                   None if method.map_kind.endswith("_raw")
                                   else getattr(method, "norm_stats", {}).get("reconstruction"))
    if method.map_kind.startswith("projection"):
        graph.export_note = ("reconstruction map |x0 - f(x0)|: the checkpoint scores by projection (autograd steps "
                             "through the VAE, not exportable); no threshold")
        graph.export_calibrated = False
    else:
        graph.export_note = "reconstruction map |x0 - f(x0)|"
    return graph
