"""Trivial reference methods that every table reports beside the real ones: no model, raw pixels only."""

from .method import MeanImage, PixelGaussian

__all__ = ["MeanImage", "PixelGaussian"]
