"""Users' own images: a folder of normal training images, folders of normal and anomalous test images, and
optional masks paired with the anomalous images by relative path and stem.

Layout (any names)::

    normal_dir/        *.png ...           normal images (searched recursively); training
    test_normal_dir/   *.png ...           normal test images (optional: else a split of normal_dir)
    abnormal_dir/      *.png | <type>/*.png  anomalous test images; sub-folders become defect types
    mask_dir/          <same relative path>/<stem>.png or <stem>_mask.png   (optional)

Without ``mask_dir`` only image-level metrics are computed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import ConfigError, DataError
from .mvtec import _DECODE_ERRORS, IMAGE_SUFFIXES, AnomalyDataset, MVTecDataModule, Sample, _unreadable, check_files

SINGLE_CHANNEL_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
_OPTION = {"normal_dir": "a folder of normal (good) training images",
           "abnormal_dir": "a folder of anomalous test images",
           "test_normal_dir": "a folder of normal test images",
           "mask_dir": "a folder of masks for the anomalous test images"}


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, symlinked folders followed, hidden entries skipped), sorted.

    Each real folder is walked once and each real file listed once (first path in sorted order), so symlink
    loops and two links to one folder never multiply the images.
    """
    out = []
    seen_dirs = {os.path.realpath(folder)}
    seen_files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in seen_dirs:
                seen_dirs.add(real)
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if f.startswith(".") or Path(f).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            real = os.path.realpath(os.path.join(dirpath, f))
            if real not in seen_files:
                seen_files.add(real)
                out.append(Path(dirpath) / f)
    return sorted(out)


def _mask_key(rel: Path) -> tuple[str, ...]:
    """Pairing key of a mask: relative folder + stem, ``_mask`` suffix removed."""
    stem = rel.stem[: -len("_mask")] if rel.stem.endswith("_mask") else rel.stem
    return (*rel.parent.parts, stem)


class FolderDataModule(MVTecDataModule):
    """Train/test loaders over user folders; same batches and targets as :class:`MVTecDataModule`."""

    def __init__(self, normal_dir: str | Path | None, abnormal_dir: str | Path | None,
                 test_normal_dir: str | Path | None = None, mask_dir: str | Path | None = None,
                 root: str | Path | None = None, category: str = "custom", test_split: float = 0.2,
                 split_seed: int = 0, is_texture: bool = False, grayscale: bool | str = "auto",
                 image_size: int | None = 256, crop_size: int | None = 224, batch_size: int = 32, num_workers: int = 0,
                 check: bool = True) -> None:
        super().__init__(root or ".", category, image_size, crop_size, batch_size, num_workers, check)
        self.dirs = {"normal_dir": normal_dir, "abnormal_dir": abnormal_dir, "test_normal_dir": test_normal_dir,
                     "mask_dir": mask_dir}
        self.test_split = float(test_split)
        self.split_seed = int(split_seed)
        self._is_texture = bool(is_texture)
        self._grayscale_opt = grayscale
        self._grayscale = False
        self.has_masks = mask_dir is not None

    @classmethod
    def from_cfg(cls, cfg: Any) -> "FolderDataModule":
        """Build from the run config (``cfg.dataset`` holds the folder options, ``cfg.category`` the name)."""
        d = cfg.dataset
        return cls(d.get("normal_dir"), d.get("abnormal_dir"), d.get("test_normal_dir"), d.get("mask_dir"),
                   root=d.get("root"), category=str(cfg.category), test_split=d.get("test_split", 0.2),
                   split_seed=d.get("split_seed", 0), is_texture=d.get("is_texture", False),
                   grayscale=d.get("grayscale", "auto"), image_size=d.image_size, crop_size=d.crop_size,
                   batch_size=d.batch_size, num_workers=d.num_workers, check=d.get("check_files", True))

    @property
    def is_texture(self) -> bool:
        return self._is_texture

    @property
    def grayscale(self) -> bool:
        return self._grayscale

    def _dir(self, key: str, required: bool) -> Path | None:
        value = self.dirs[key]
        if value is None or str(value) == "":
            if required:
                raise ConfigError(f"dataset=folder needs dataset.{key}=DIR ({_OPTION[key]})")
            return None
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = self.root / p
        p = p.resolve()
        if not p.is_dir():
            raise DataError(f"dataset.{key}={value} not found: {p} is not a folder; pass dataset.{key}=DIR "
                            f"({_OPTION[key]})")
        return p

    def _nonempty(self, key: str, folder: Path) -> list[Path]:
        images = list_images(folder)
        if not images:
            what = "empty train folder" if key == "normal_dir" else "empty folder"
            raise DataError(f"{what}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} (dataset.{key}); "
                            f"put {_OPTION[key]} there")
        return images

    def setup(self) -> "FolderDataModule":
        """Find, pair and check every file; raises DataError/ConfigError before any model work."""
        if not 0 < self.test_split < 1:
            raise ConfigError(f"dataset.test_split={self.test_split} must be in (0, 1)")
        normal = self._dir("normal_dir", True)
        abnormal = self._dir("abnormal_dir", True)
        test_normal = self._dir("test_normal_dir", False)
        mask_dir = self._dir("mask_dir", False)
        for key, other in (("abnormal_dir", abnormal), ("test_normal_dir", test_normal), ("mask_dir", mask_dir)):
            if other is not None and (other == normal or normal in other.parents):
                raise ConfigError(f"dataset.{key}={other} is inside dataset.normal_dir={normal}: its images would be "
                                  f"trained on; keep normal training images in a folder of their own")
            if other is not None and key != "mask_dir" and other in normal.parents:
                raise ConfigError(f"dataset.normal_dir={normal} is inside dataset.{key}={other}: training images "
                                  f"would be tested on; keep them in separate folders")

        train = self._nonempty("normal_dir", normal)
        if test_normal is None:
            train, held = self._split(train)
        else:
            held = self._nonempty("test_normal_dir", test_normal)
        self.train_samples = [Sample(p, 0, "good") for p in train]
        good = [Sample(p, 0, "good") for p in held]
        bad = self._abnormal(abnormal, mask_dir)
        self.test_samples = sorted(bad, key=lambda s: (s.defect_type, str(s.path))) + good
        if self.check:
            check_files(self.train_samples + self.test_samples)
        self._grayscale = self._detect_grayscale()
        return self

    def _split(self, images: list[Path]) -> tuple[list[Path], list[Path]]:
        """Hold out ``test_split`` of the normal images as normal test images (fixed by ``split_seed``)."""
        n = len(images)
        n_test = max(1, int(round(self.test_split * n)))
        if n - n_test < 1:
            raise DataError(f"only {n} image(s) in dataset.normal_dir: too few to hold out normal test images; "
                            f"add images or pass dataset.test_normal_dir=DIR")
        order = np.random.default_rng(self.split_seed).permutation(n)
        test = set(order[:n_test].tolist())
        return [p for i, p in enumerate(images) if i not in test], [p for i, p in enumerate(images) if i in test]

    def _abnormal(self, folder: Path, mask_dir: Path | None) -> list[Sample]:
        images = self._nonempty("abnormal_dir", folder)
        masks: dict[tuple[str, ...], Path] = {}
        if mask_dir is not None:
            for m in list_images(mask_dir):
                key = _mask_key(m.relative_to(mask_dir))
                if key in masks:
                    raise DataError(f"two masks for one image: {masks[key]} and {m}; keep one")
                masks[key] = m
        samples = []
        keys = set()
        for p in images:
            rel = p.relative_to(folder)
            defect = rel.parts[0] if len(rel.parts) > 1 else "abnormal"
            key = (*rel.parent.parts, rel.stem)
            keys.add(key)
            mask = masks.get(key)
            if mask_dir is not None and mask is None:
                expected = mask_dir.joinpath(*rel.parent.parts, rel.stem + ".png")
                raise DataError(f"image without mask: {p} (expected {expected} or {rel.stem}_mask.png there); "
                                f"add the mask, or remove dataset.mask_dir for image metrics only")
            samples.append(Sample(p, 1, defect, mask))
        orphans = sorted(set(masks) - keys)
        if orphans:
            o = masks[orphans[0]]
            raise DataError(f"mask without image: {o} (no image {folder.joinpath(*orphans[0])}.* in dataset.abnormal_dir); "
                            f"remove the mask or add the image")
        return samples

    def _detect_grayscale(self) -> bool:
        opt = self._grayscale_opt
        if isinstance(opt, bool):
            return opt
        if str(opt).lower() in ("true", "false"):
            return str(opt).lower() == "true"
        if str(opt).lower() != "auto":
            raise ConfigError(f"dataset.grayscale={opt!r} must be auto, true or false")
        modes = set()
        for s in self.train_samples:
            try:
                with Image.open(s.path) as img:
                    modes.add(img.mode)
            except _DECODE_ERRORS as err:
                raise _unreadable(s.path, err) from None
        return modes <= set(SINGLE_CHANNEL_MODES)

    def train_dataset(self) -> AnomalyDataset:
        return AnomalyDataset(self.train_samples, self.image_size, self.crop_size, with_labels=False)

    def test_dataset(self, with_labels: bool = False) -> AnomalyDataset:
        return AnomalyDataset(self.test_samples, self.image_size, self.crop_size, with_labels=with_labels)
