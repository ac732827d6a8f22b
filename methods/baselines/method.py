"""Two baselines on raw pixels (ImageNet normalisation undone, values in [0, 1]).

- ``mean_image``: map = Euclidean distance (over channels) of each pixel to the mean training image.
- ``pixel_gaussian``: map = root-mean-square over channels of the per-pixel z-score against the training
  images' per-pixel mean and standard deviation.

Both smooth the map with a Gaussian (``smoothing_sigma`` pixels) and score an image by the map's maximum. A
method that does not beat them is not using anything beyond "where does this pixel usually look like that".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from scipy import ndimage
from torch.utils.data import DataLoader

from adbench.api import Prediction, RunContext
from adbench.data.transforms import denormalize
from adbench.registry import register_method
from adbench.utils import load_method_state, progress, save_method_state

CHECKPOINT_VERSION = 1


class _PixelStatistics:
    """Per-pixel mean and standard deviation of the training images; subclasses turn them into a map."""

    name = ""

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.mean: torch.Tensor | None = None  # [3, H, W], float64
        self.std: torch.Tensor | None = None   # [3, H, W], float64
        self.timings: dict[str, float] = {}

    def fit(self, train_loader: DataLoader) -> None:
        """Accumulate sum and sum of squares of every pixel over the training images (float64)."""
        total = total_sq = None
        n = 0
        for batch in progress(train_loader, f"{self.name} fit", self.ctx.progress, unit="batch"):
            x = denormalize(batch["image"]).double()  # [B, 3, H, W] in [0, 1]
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
            n += x.shape[0]
        if n == 0:
            raise RuntimeError(f"{self.name}.fit got no training images")
        self.mean = total / n
        var = (total_sq / n - self.mean**2).clamp_min(0.0)
        self.std = var.sqrt()

    def _raw_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, test_loader: DataLoader) -> Prediction:
        """Map per pixel, Gaussian-smoothed; image score = the map's maximum."""
        if self.mean is None:
            raise RuntimeError(f"{self.name}.predict called before fit or load")
        sigma = float(self.cfg.smoothing_sigma)
        maps = []
        for batch in progress(test_loader, f"{self.name} predict", self.ctx.progress, unit="batch"):
            raw = self._raw_map(denormalize(batch["image"]).double()).float().numpy()  # [B, H, W]
            if sigma > 0:
                raw = np.stack([ndimage.gaussian_filter(m, sigma=sigma, truncate=4.0) for m in raw])
            maps.append(raw)
        amaps = np.concatenate(maps)  # [N, H, W]
        return Prediction(amaps.reshape(len(amaps), -1).max(1), amaps)

    def save(self, directory: str | Path) -> None:
        if self.mean is None:
            raise RuntimeError(f"{self.name}.save called before fit")
        save_method_state(Path(directory) / f"{self.name}.pt", self.name, CHECKPOINT_VERSION, self.cfg,
                          mean=self.mean, std=self.std)

    @classmethod
    def load(cls, directory: str | Path, ctx: RunContext):
        state, cfg = load_method_state(Path(directory) / f"{cls.name}.pt", cls.name, CHECKPOINT_VERSION)
        self = cls(cfg, ctx)
        self.mean, self.std = state["mean"].double(), state["std"].double()
        return self


@register_method("mean_image")
class MeanImage(_PixelStatistics):
    """Distance of each pixel to the mean training image."""

    name = "mean_image"

    def _raw_map(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 3, H, W] -> [B, H, W]
        return (x - self.mean).pow(2).sum(1).sqrt()


@register_method("pixel_gaussian")
class PixelGaussian(_PixelStatistics):
    """Per-pixel z-score against the training images' mean and standard deviation."""

    name = "pixel_gaussian"

    def _raw_map(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 3, H, W] -> [B, H, W]
        z = (x - self.mean) / (self.std + float(self.cfg.eps))
        return z.pow(2).mean(1).sqrt()
