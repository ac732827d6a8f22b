"""The contract between the harness and a method: data in, scores out.

A method is a class registered with ``@register_method("name")``::

    method = cls(cfg.method, ctx)        # cfg.method: the method's DictConfig, ctx: RunContext
    method.fit(train_loader)             # batches: {"image": [B, 3, H, W], "path": [B]} normal images only
    pred = method.predict(test_loader)   # batches: {"image": [B, 3, H, W], "path": [B]}, no labels
    method.save(directory); cls.load(directory, ctx)

``predict`` returns a :class:`Prediction` with image scores ``[N]`` and anomaly maps ``[N, H, W]`` at the
input (mask) resolution, in loader order. Images arrive ImageNet-normalised; ``adbench.data.denormalize``
turns them back into [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader


@dataclass
class RunContext:
    """What a method may know about the run besides its own config. Never labels."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    category: str = ""
    is_texture: bool = False
    grayscale: bool = False
    image_size: tuple[int, int] = (224, 224)
    work_dir: Path | None = None
    progress: bool = True
    feature_cache: Path | None = None  # opt-in feature cache folder (None: off)
    data_id: str = ""  # identifies dataset, root, category and transform, for cache keys


@dataclass
class Prediction:
    """Output of ``predict``: ``image_scores`` [N] and ``anomaly_maps`` [N, H, W] (float32)."""

    image_scores: np.ndarray
    anomaly_maps: np.ndarray

    def __post_init__(self) -> None:
        self.image_scores = np.asarray(self.image_scores, dtype=np.float32).reshape(-1)
        self.anomaly_maps = np.asarray(self.anomaly_maps, dtype=np.float32)
        if self.anomaly_maps.ndim != 3 or self.anomaly_maps.shape[0] != self.image_scores.shape[0]:
            raise ValueError(
                f"Prediction needs image_scores [N] and anomaly_maps [N, H, W]; got {self.image_scores.shape} "
                f"and {self.anomaly_maps.shape}"
            )


@runtime_checkable
class Method(Protocol):
    """Structural type every registered method satisfies."""

    def __init__(self, cfg: Any, ctx: RunContext) -> None: ...

    def fit(self, train_loader: DataLoader) -> None: ...

    def predict(self, test_loader: DataLoader) -> Prediction: ...

    def save(self, directory: str | Path) -> None: ...

    @classmethod
    def load(cls, directory: str | Path, ctx: RunContext) -> "Method": ...
