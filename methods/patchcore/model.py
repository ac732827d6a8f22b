"""PatchCore's locally aware patch features (Roth et al., CVPR 2022), as a pure nn.Module."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adbench.backbones import FeatureExtractor


class PatchFeatures(nn.Module):
    """Backbone layers -> one embedding per patch of the shallowest layer's grid.

    Each layer: 3x3 neighbourhood (stride 1, zero padding 1) flattened channel-major and adaptive-average-pooled
    to ``layer_dim``; deeper layers upsampled bilinearly to the first layer's grid; the per-layer vectors
    concatenated and pooled to ``embed_dim``. Pooling is linear over channels, so pooling before the upsampling
    gives the same numbers as the reference order and moves ``layer_dim`` instead of ``C*9`` channels.
    """

    def __init__(self, extractor: FeatureExtractor, layer_dim: int = 1024, embed_dim: int = 1024,
                 patch_size: int = 3) -> None:
        super().__init__()
        self.extractor = extractor
        self.layer_dim = layer_dim
        self.embed_dim = embed_dim
        self.patch_size = patch_size

    def _aggregate(self, fmap: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        b, c, h, w = fmap.shape
        k = self.patch_size
        cols = F.unfold(fmap, kernel_size=k, padding=(k - 1) // 2, stride=1)  # [B, C*k*k, h*w]
        cols = cols.transpose(1, 2).reshape(b * h * w, 1, c * k * k)
        pooled = F.adaptive_avg_pool1d(cols, self.layer_dim)  # [B*h*w, 1, layer_dim]
        pooled = pooled.reshape(b, h, w, self.layer_dim).permute(0, 3, 1, 2)  # [B, layer_dim, h, w]
        if (h, w) != tuple(grid):
            pooled = F.interpolate(pooled, size=tuple(grid), mode="bilinear", align_corners=False)
        return pooled

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[B, 3, H, W] -> (embeddings [B, h*w, embed_dim], grid (h, w))."""
        feats = self.extractor(x)
        grid = tuple(feats[0].shape[-2:])
        per_layer = [self._aggregate(f.float(), grid) for f in feats]  # each [B, layer_dim, h, w]
        stacked = torch.stack(per_layer, dim=1)  # [B, L, layer_dim, h, w]
        b, n_layers, d, h, w = stacked.shape
        flat = stacked.permute(0, 3, 4, 1, 2).reshape(b * h * w, 1, n_layers * d)  # layer-major, as the reference
        emb = F.adaptive_avg_pool1d(flat, self.embed_dim).reshape(b, h * w, self.embed_dim)
        return emb, (h, w)
