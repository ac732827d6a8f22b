"""CutPaste (Li et al., CVPR 2021): self-supervised CutPaste / scar classification, Gaussian density scoring."""

from .augment import AugmentConfig, cutpaste, make_views, scar
from .density import GaussianDensity, KernelDensity, SklearnGaussianDensity, ledoit_wolf, make_density
from .method import CutPaste
from .model import CutPasteNet, build_encoder
from . import export as _export  # noqa: F401  (registers the ONNX exporter)

__all__ = [
    "AugmentConfig", "CutPaste", "CutPasteNet", "GaussianDensity", "KernelDensity", "SklearnGaussianDensity",
    "build_encoder", "cutpaste", "ledoit_wolf", "make_density", "make_views", "scar",
]
