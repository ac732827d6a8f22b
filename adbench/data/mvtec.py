"""MVTec AD layout: ``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from .errors import DataError
from .transforms import mask_array, output_size, transform_image, transform_mask

T = TypeVar("T")

MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
CATEGORIES = tuple(sorted(TEXTURES + OBJECTS))
GRAYSCALE = ("grid", "screw", "zipper")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# decoders tried on those files: formats with a fixed signature, so random bytes are never taken for an image
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")


@dataclass(frozen=True)
class Sample:
    """One image file with its ground truth (``mask_path`` None for good images)."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def category_dir(root: str | Path, category: str, known: tuple[str, ...] = CATEGORIES,
                 how_to_get: str = f"download MVTec AD from {MVTEC_URL} and pass dataset.root=DIR") -> Path:
    """Resolve ``<root>/<category>``; missing root or category raises DataError saying where and how."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root} (looked for it as dataset.root); {how_to_get}")
    cdir = root / category
    if not cdir.is_dir():
        present = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
        if category not in known and category not in present:
            raise DataError(
                f"unknown category {category!r} under {root}; known categories: {', '.join(known)}"
                + (f"; present here: {', '.join(present)}" if present else "")
            )
        raise DataError(f"category {category!r} not found: {cdir} does not exist; {how_to_get}")
    return cdir


def scan_split(cdir: Path, split: str) -> list[Sample]:
    """List the samples of ``train`` or ``test``, masks paired with images by file stem."""
    sdir = cdir / split
    if not sdir.is_dir():
        raise DataError(f"missing split folder: {sdir} (expected MVTec AD layout <category>/{split}/<defect>/*.png)")
    samples: list[Sample] = []
    for ddir in sorted(p for p in sdir.iterdir() if p.is_dir()):
        defect = ddir.name
        if split == "train" and defect != "good":
            raise DataError(f"training folder {ddir} is not 'good': train/ may hold normal images only")
        images = _images(ddir)
        if defect == "good":
            samples += [Sample(p, 0, "good") for p in images]
            continue
        gdir = cdir / "ground_truth" / defect
        masks = {m.stem[: -len("_mask")] if m.stem.endswith("_mask") else m.stem: m
                 for m in (_images(gdir) if gdir.is_dir() else [])}
        stems = {p.stem for p in images}
        for p in images:
            mask = masks.get(p.stem)
            if mask is None:
                raise DataError(f"defect image without mask: {p} (expected {gdir / (p.stem + '_mask.png')})")
            samples.append(Sample(p, 1, defect, mask))
        orphans = sorted(set(masks) - stems)
        if orphans:
            raise DataError(f"mask without image: {masks[orphans[0]]} (no {ddir / orphans[0]}.*); remove it or add the image")
    if not samples:
        raise DataError(f"empty split: no images found under {sdir}")
    if split == "train" and not any(s.defect_type == "good" for s in samples):
        raise DataError(f"empty split: no normal training images in {sdir / 'good'}")
    return samples


def check_files(samples: list[Sample], workers: int | None = None) -> None:
    """Decode every image and mask fully; raise DataError on unreadable, truncated, oversized or mismatched files.

    Files are decoded by ``workers`` threads (default: up to 8, one per available core; Pillow decodes without
    the GIL); the error reported is the first bad sample in ``samples`` order, whatever the threads' timing.
    """
    if workers is None:
        workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    if workers <= 1 or len(samples) < 2:
        for s in samples:
            _check_sample(s)
        return
    ex = ThreadPoolExecutor(max_workers=workers)
    try:
        for _ in ex.map(_check_sample, samples):
            pass
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _check_sample(s: Sample) -> None:
    size = _check_image(s.path)
    if s.mask_path is not None:
        msize = _check_image(s.mask_path)
        if msize != size:
            raise DataError(
                f"mask/image size mismatch: {s.mask_path} is {msize[0]}x{msize[1]} but {s.path} is "
                f"{size[0]}x{size[1]}; masks must have their image's size"
            )


def _unreadable(path: Path, err: BaseException) -> DataError:
    if isinstance(err, Image.DecompressionBombError):
        return DataError(f"image too large: {path} ({err}); downscale it below Pillow's limit of "
                         f"{2 * Image.MAX_IMAGE_PIXELS} pixels or remove the file")
    return DataError(f"unreadable or truncated image: {path} ({type(err).__name__}: {err}); replace or remove the file")


_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _check_image(path: Path) -> tuple[int, int]:
    """(width, height) of an image file after decoding it fully (``verify`` alone misses truncated JPEGs)."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            size = img.size
            img.verify()  # structure and chunk checksums (PNG CRCs are not checked by decoding)
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            img.load()  # every pixel: a truncated JPEG or PNG fails here
        return size
    except _DECODE_ERRORS as err:
        raise _unreadable(path, err) from None


def _decode(path: Path, convert: Callable[[Image.Image], T]) -> T:
    """Decode ``path`` fully and ``convert`` it, turning decoder failures into DataError naming the file."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            img.load()
            return convert(img)
    except _DECODE_ERRORS as err:
        raise _unreadable(path, err) from None


def load_image(path: Path) -> Image.Image:
    """Decode an image fully -> 8-bit PIL image (DataError naming the file when it cannot be decoded)."""
    return _decode(path, lambda img: to_8bit(img.copy()))


def load_mask(path: Path) -> np.ndarray:
    """Decode a mask file -> bool [H, W]: every non-zero pixel is anomalous (0/1, 0/255, 16-bit, colour)."""
    return _decode(path, mask_array)


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float single-channel images -> 8-bit ``L`` scaled by their bit depth (PIL would clip them)."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return img
    a = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0 if a.size and a.max() > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L")


class AnomalyDataset(Dataset):
    """Samples -> dict batches ``image [3,H,W]``, ``mask [H,W]``, ``label``, ``defect_type``, ``path``.

    With ``with_labels=False`` only ``image`` and ``path`` are returned: that is what a method sees at test time.
    """

    def __init__(self, samples: list[Sample], image_size: int | None = 256, crop_size: int | None = 224,
                 with_labels: bool = True) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.crop_size = crop_size
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def out_size(self) -> tuple[int, int] | None:
        """(H, W) of every item; None when images keep their own sizes (``image_size`` None, no crop)."""
        return output_size(self.image_size, self.crop_size)

    def item_size(self, i: int) -> tuple[int, int]:
        """(H, W) of item ``i`` (read from the file header when images keep their own sizes)."""
        if self.out_size is not None:
            return self.out_size
        with Image.open(self.samples[i].path) as img:
            return (img.height, img.width)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        image = transform_image(load_image(s.path), self.image_size, self.crop_size)
        item = {"image": image, "path": str(s.path)}
        if self.with_labels:
            item.update(mask=self.mask(i), label=s.label, defect_type=s.defect_type)
        return item

    def mask(self, i: int) -> torch.Tensor:
        s = self.samples[i]
        if s.mask_path is None:
            return torch.zeros(self.item_size(i), dtype=torch.uint8)
        return transform_mask(load_mask(s.mask_path), self.image_size, self.crop_size)

    def targets(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Ground truth for the evaluator: labels [N], masks [N, H, W] (bool), defect types."""
        labels = np.array([s.label for s in self.samples], dtype=np.int64)
        sizes = {self.item_size(i) for i in range(len(self.samples))}
        if len(sizes) > 1:
            raise DataError(f"the test images have {len(sizes)} different sizes ({', '.join(map(str, sorted(sizes)[:4]))}"
                            f"); the evaluator needs one: set dataset.image_size=N")
        masks = np.zeros((len(self.samples), *(sizes.pop() if sizes else (0, 0))), dtype=bool)
        for i, s in enumerate(self.samples):
            if s.mask_path is not None:
                masks[i] = self.mask(i).numpy().astype(bool)
        return labels, masks, [s.defect_type for s in self.samples]


class MVTecDataModule:
    """Train/test loaders for one category in MVTec AD layout. Order is deterministic (sorted paths)."""

    known_categories: tuple[str, ...] = CATEGORIES
    how_to_get = f"download MVTec AD from {MVTEC_URL} (or run `python -m adbench.data download --root DIR`) and pass dataset.root=DIR"

    def __init__(self, root: str | Path, category: str, image_size: int | None = 256, crop_size: int | None = 224,
                 batch_size: int = 32, num_workers: int = 0, check: bool = True) -> None:
        self.root = Path(root)
        self.category = category
        self.image_size = int(image_size) if image_size is not None else None  # None: each image keeps its size
        self.crop_size = int(crop_size) if crop_size else None
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.check = check
        self.train_samples: list[Sample] = []
        self.test_samples: list[Sample] = []

    @property
    def is_texture(self) -> bool:
        return self.category in TEXTURES

    @property
    def grayscale(self) -> bool:
        return self.category in GRAYSCALE

    @property
    def out_size(self) -> tuple[int, int] | None:
        return output_size(self.image_size, self.crop_size)

    def prepare(self) -> None:
        """Hook for datasets that create themselves (synthetic)."""

    def setup(self) -> "MVTecDataModule":
        """Find and check every file; raises DataError before any model work."""
        self.prepare()
        cdir = category_dir(self.root, self.category, self.known_categories, self.how_to_get)
        self.train_samples = scan_split(cdir, "train")
        self.test_samples = scan_split(cdir, "test")
        if self.check:
            check_files(self.train_samples + self.test_samples)
        return self

    def train_dataset(self) -> AnomalyDataset:
        return AnomalyDataset(self.train_samples, self.image_size, self.crop_size, with_labels=False)

    def test_dataset(self, with_labels: bool = False) -> AnomalyDataset:
        return AnomalyDataset(self.test_samples, self.image_size, self.crop_size, with_labels=with_labels)

    def _loader(self, ds: Dataset) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        """Normal training images, ``{"image", "path"}`` batches, fixed order."""
        return self._loader(self.train_dataset())

    def test_dataloader(self) -> DataLoader:
        """Test images without labels, ``{"image", "path"}`` batches: what methods get. Images at their own sizes
        (tiling) come one per batch: a batch of full-resolution images would be large, and the tiled method
        batches their tiles itself."""
        ds = self.test_dataset(with_labels=False)
        if self.out_size is None:
            return DataLoader(ds, batch_size=1, shuffle=False, num_workers=self.num_workers, persistent_workers=False)
        return self._loader(ds)

    def test_targets(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Labels [N], masks [N, H, W] and defect types of the test split, for the evaluator only."""
        return self.test_dataset(with_labels=True).targets()
