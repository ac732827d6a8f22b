"""PatchCore: greedy-coreset memory bank of locally aware patch features, faiss kNN scoring."""

from .coreset import greedy_coreset
from .method import PatchCore
from .model import PatchFeatures
from . import export as _export  # noqa: F401  (registers the ONNX exporter)

__all__ = ["PatchCore", "PatchFeatures", "greedy_coreset"]
