"""PatchCore: greedy-coreset memory bank of locally aware patch features, faiss kNN scoring."""

from .coreset import greedy_coreset
from .method import PatchCore
from .model import PatchFeatures

__all__ = ["PatchCore", "PatchFeatures", "greedy_coreset"]
