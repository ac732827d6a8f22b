"""Datasets: MVTec AD layout, the generated synthetic dataset, transforms and input errors."""

from .errors import ConfigError, DataError
from .mvtec import CATEGORIES, GRAYSCALE, OBJECTS, TEXTURES, AnomalyDataset, MVTecDataModule, Sample
from .synthetic import SYNTHETIC_CATEGORIES, SyntheticDataModule, generate_category
from .transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize

__all__ = [
    "CATEGORIES", "GRAYSCALE", "OBJECTS", "TEXTURES", "SYNTHETIC_CATEGORIES", "IMAGENET_MEAN", "IMAGENET_STD",
    "AnomalyDataset", "ConfigError", "DataError", "MVTecDataModule", "Sample", "SyntheticDataModule",
    "denormalize", "normalize", "generate_category",
]
