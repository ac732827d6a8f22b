"""Tiling for high-resolution images: cut images into overlapping tiles, fit and score the tiles, stitch the maps.

``dataset.tiling.size=N dataset.tiling.stride=M`` wraps any registered method in :class:`TiledMethod`: the method
is fitted on the N x N tiles of every training image and scores the tiles of each test image; the tile maps are
stitched back to the image (overlapping pixels averaged) and the image score is the maximum of its tiles' scores.
Tiles are cut from the image at the dataset's working resolution (``dataset.image_size``; ``null`` keeps every
image at its own size, so ``predict`` accepts images of sizes never seen in training).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .api import Prediction
from .data.errors import ConfigError


@dataclass(frozen=True)
class Tiling:
    """Square tiles of side ``size`` every ``stride`` pixels; the last row and column are aligned with the image's
    bottom and right edges, so every pixel is covered."""

    size: int
    stride: int

    @classmethod
    def from_dict(cls, d: Any) -> "Tiling | None":
        """A checkpoint manifest's ``tiling`` entry (None: not tiled)."""
        return None if not d else cls(int(d["size"]), int(d["stride"]))

    @classmethod
    def from_cfg(cls, node: Any) -> "Tiling | None":
        """``dataset.tiling`` -> Tiling, or None when off (no node or ``size: null``); ConfigError on bad values."""
        if node is None or node.get("size") is None:
            if node is not None and node.get("stride") is not None:
                raise ConfigError(f"dataset.tiling.stride={node.get('stride')} needs dataset.tiling.size=N (the tile "
                                  f"side); without a size nothing is tiled")
            return None
        size, stride = node.get("size"), node.get("stride")
        stride = size if stride is None else stride
        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            raise ConfigError(f"dataset.tiling.size={size!r} must be an integer >= 8 (the tile side in pixels), "
                              f"or null for no tiling")
        if not isinstance(stride, int) or isinstance(stride, bool) or not 0 < stride <= size:
            raise ConfigError(f"dataset.tiling.stride={stride!r} must be an integer in [1, dataset.tiling.size={size}] "
                              f"(a larger stride would leave pixels unscored); null means = size (no overlap)")
        return cls(int(size), int(stride))

    def origins(self, length: int) -> list[int]:
        """Start offsets along one side of ``length`` pixels (the last tile ends at the edge)."""
        if length < self.size:
            raise ConfigError(f"an image side of {length} px is smaller than dataset.tiling.size={self.size}; "
                              f"lower the tile size or raise dataset.image_size")
        out = list(range(0, length - self.size + 1, self.stride))
        if out[-1] != length - self.size:
            out.append(length - self.size)
        return out

    def boxes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners (y, x) of the tiles of an image, row by row."""
        return [(y, x) for y in self.origins(height) for x in self.origins(width)]

    def to_dict(self) -> dict[str, int]:
        return {"size": self.size, "stride": self.stride}


def cut(image: torch.Tensor, boxes: list[tuple[int, int]], size: int) -> torch.Tensor:
    """[C, H, W] -> tiles [T, C, size, size] at ``boxes``."""
    return torch.stack([image[:, y:y + size, x:x + size] for y, x in boxes])


def stitch(tile_maps: np.ndarray, boxes: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Tile maps [T, s, s] -> one map [H, W]: each pixel is the mean of the tiles that cover it."""
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.float64)
    s = tile_maps.shape[-1]
    for m, (y, x) in zip(tile_maps, boxes):
        total[y:y + s, x:x + s] += m
        count[y:y + s, x:x + s] += 1
    if (count == 0).any():  # cannot happen with Tiling.boxes; guards hand-made boxes
        raise ValueError("stitch: the tiles do not cover the image")
    return (total / count).astype(np.float32)


class TileDataset(Dataset):
    """The tiles of every image of ``images`` (a dataset of ``{"image": [C, H, W], "path"}`` items), image by
    image, row by row: ``{"image": [C, s, s], "path": "<path>#<y>,<x>"}``. Each image is loaded once per pass
    when read in order (the last image is kept)."""

    def __init__(self, images: Dataset, tiling: Tiling, shapes: list[tuple[int, int]]) -> None:
        self.images, self.tiling = images, tiling
        self.index = [(i, box) for i, (h, w) in enumerate(shapes) for box in tiling.boxes(h, w)]
        self._cached: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        i, (y, x) = self.index[k]
        if self._cached is None or self._cached[0] != i:
            self._cached = (i, self.images[i])
        item = self._cached[1]
        s = self.tiling.size
        return {"image": item["image"][:, y:y + s, x:x + s], "path": f"{item['path']}#{y},{x}"}


class _Tiles(Dataset):
    """Ready tiles as loader items."""

    def __init__(self, tiles: torch.Tensor, names: list[str]) -> None:
        self.tiles, self.names = tiles, names

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.tiles[i], "path": self.names[i]}


def image_shapes(dataset: Dataset) -> list[tuple[int, int]]:
    """(H, W) of every image a dataset yields: its ``out_size`` when all share one, else each item's size (from
    the file header when the dataset offers ``item_size``, else by loading the item)."""
    out = getattr(dataset, "out_size", None)
    if out is not None:
        return [tuple(out)] * len(dataset)
    item_size = getattr(dataset, "item_size", None)
    if item_size is not None:
        return [tuple(item_size(i)) for i in range(len(dataset))]
    return [tuple(dataset[i]["image"].shape[-2:]) for i in range(len(dataset))]


def group_by_size(sizes: list[tuple[int, ...]]) -> list[list[int]]:
    """Indices of equal sizes, in first-seen order: images at their own sizes are scored one size per call (a
    :class:`~adbench.api.Prediction` holds maps of one size)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(i)
    return list(groups.values())


def tiling_note(tiling: Tiling) -> str:
    """What a method's own size error means under tiling (its images are the tiles)."""
    return (f"tiled: the method's images are the {tiling.size} x {tiling.size} px tiles, so the size to change is "
            f"dataset.tiling.size")


class TiledMethod:
    """Any method, fitted and scored on tiles: ``fit`` / ``predict`` / ``save`` / ``load`` like the method itself.

    ``predict`` returns maps at each image's own size (stitched, overlaps averaged) and image scores = the max of
    the tiles' image scores. Images are scored in groups of at most ``images_per_call`` images and about
    ``max_tiles`` tiles (at least one image) so that the tiles and tile maps held at once stay bounded however
    large the images.
    """

    def __init__(self, method: Any, tiling: Tiling, batch_size: int = 32, images_per_call: int = 8,
                 max_tiles: int = 256) -> None:
        self.method, self.tiling = method, tiling
        self.batch_size, self.images_per_call = int(batch_size), int(images_per_call)
        self.max_tiles = int(max_tiles)
        self.extra_predictions: dict[str, Prediction] = {}

    def __getattr__(self, name: str) -> Any:  # train_log, timings, cfg, ...: the wrapped method's
        if name in ("method", "tiling"):
            raise AttributeError(name)
        return getattr(self.method, name)

    def fit(self, train_loader: DataLoader) -> None:
        """Fit the method on the tiles of every training image (same batch size, same order)."""
        ds = train_loader.dataset
        tiles = TileDataset(ds, self.tiling, image_shapes(ds))
        try:
            self.method.fit(DataLoader(tiles, batch_size=train_loader.batch_size or self.batch_size, shuffle=False,
                                       num_workers=0))
        except ConfigError as err:
            raise ConfigError(f"{err} ({tiling_note(self.tiling)})") from None

    def predict(self, test_loader: DataLoader) -> Prediction:
        """Score the tiles of each image; stitch the maps; image score = max over the image's tiles."""
        scores: list[float] = []
        maps: list[np.ndarray] = []
        extra: dict[str, tuple[list[float], list[np.ndarray]]] = {}
        group: list[tuple[torch.Tensor, str]] = []
        n_tiles = 0

        def flush() -> None:
            nonlocal n_tiles
            n_tiles = 0
            preds = self._score_group(group)
            for key, (s, m) in preds.items():
                dest = (scores, maps) if key == "" else extra.setdefault(key, ([], []))
                dest[0].extend(s)
                dest[1].extend(m)
            group.clear()

        for batch in test_loader:
            for img, path in zip(batch["image"], batch["path"]):
                k = len(self.tiling.boxes(*img.shape[-2:]))
                if group and n_tiles + k > self.max_tiles:
                    flush()
                group.append((img, str(path)))
                n_tiles += k
                if len(group) >= self.images_per_call:
                    flush()
        if group:
            flush()
        shapes = {m.shape for m in maps}
        if len(shapes) > 1:
            raise ConfigError(f"tiled prediction: the images have different sizes ({', '.join(sorted(map(str, shapes)))}) "
                              f"and cannot be returned as one batch; score them one size at a time or set "
                              f"dataset.image_size")
        self.extra_predictions = {k: Prediction(np.asarray(s), np.stack(m)) for k, (s, m) in extra.items()}
        return Prediction(np.asarray(scores), np.stack(maps))

    def _score_group(self, group: list[tuple[torch.Tensor, str]]) -> dict[str, tuple[list[float], list[np.ndarray]]]:
        """{"" (the method's own scores) or an extra prediction's key: (image scores, stitched maps)} of a group."""
        s = self.tiling.size
        boxes = [self.tiling.boxes(*img.shape[-2:]) for img, _ in group]
        tiles = torch.cat([cut(img, b, s) for (img, _), b in zip(group, boxes)])  # [T, C, s, s]
        names = [f"{p}#{y},{x}" for (_, p), b in zip(group, boxes) for y, x in b]
        pred = self.method.predict(DataLoader(_Tiles(tiles, names), batch_size=self.batch_size, shuffle=False))
        kinds = {"": pred, **(getattr(self.method, "extra_predictions", None) or {})}
        out: dict[str, tuple[list[float], list[np.ndarray]]] = {}
        for key, p in kinds.items():
            if p.anomaly_maps.shape[-2:] != (s, s):
                raise RuntimeError(f"tiled prediction: the method returned tile maps of shape "
                                   f"{p.anomaly_maps.shape[-2:]}, expected ({s}, {s})")
            sc, mp, start = [], [], 0
            for (img, _), b in zip(group, boxes):
                sc.append(float(p.image_scores[start:start + len(b)].max()))
                mp.append(stitch(p.anomaly_maps[start:start + len(b)], b, tuple(img.shape[-2:])))
                start += len(b)
            out[key] = (sc, mp)
        return out

    def save(self, directory: str | Path) -> None:
        """The method's own files (the tiling goes into the checkpoint manifest)."""
        self.method.save(directory)
