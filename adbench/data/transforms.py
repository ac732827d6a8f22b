"""Image and mask transforms: resize, optional center crop, ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def output_size(image_size: int | None, crop_size: int | None) -> tuple[int, int] | None:
    """(H, W) of images and masks after :func:`transform_image`; None when it depends on the image
    (``image_size`` None: each image keeps its own size)."""
    side = crop_size if crop_size else image_size
    return None if side is None else (int(side), int(side))


def transform_image(img: Image.Image, image_size: int | None, crop_size: int | None) -> torch.Tensor:
    """PIL image (any mode) -> normalised float tensor [3, H, W]; ``image_size`` None keeps the image's size."""
    img = img.convert("RGB")  # grayscale and RGBA inputs become 3-channel
    if image_size is not None:
        img = TF.resize(img, [image_size, image_size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    if crop_size:
        img = TF.center_crop(img, [crop_size, crop_size])
    x = TF.to_tensor(img)  # [3, H, W] in [0, 1]
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def mask_array(mask: Image.Image) -> np.ndarray:
    """The one binarisation rule for masks: bool [H, W], True wherever any colour channel is non-zero.

    Works on the decoded mode itself (no 8-bit conversion first), so 0/1, 0/255 and 16-bit masks all count every
    non-zero pixel; an alpha channel is ignored.
    """
    if mask.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(mask) != 0
    if mask.mode in ("LA", "La"):
        return np.asarray(mask.getchannel("L")) != 0
    return np.asarray(mask.convert("RGB")).any(axis=-1)


def transform_mask(mask: Image.Image | np.ndarray, image_size: int | None, crop_size: int | None) -> torch.Tensor:
    """Mask (PIL image or bool array [H, W]) -> binary uint8 tensor [H, W].

    Binarised first (:func:`mask_array`: any non-zero pixel is anomalous), then nearest-neighbour resized and
    cropped like the image, so resizing never turns a 0/1 mask into an empty one.
    """
    m = mask if isinstance(mask, np.ndarray) else mask_array(mask)
    img = Image.fromarray(m.astype(np.uint8) * 255)
    if image_size is not None:
        img = TF.resize(img, [image_size, image_size], interpolation=TF.InterpolationMode.NEAREST)
    if crop_size:
        img = TF.center_crop(img, [crop_size, crop_size])
    return torch.from_numpy((np.asarray(img) > 0).astype(np.uint8))


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: [B, 3, H, W] or [3, H, W] -> values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Apply ImageNet normalisation to [.., 3, H, W] values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std
