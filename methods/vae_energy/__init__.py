"""VAE with iterative energy-based projection (Dehaene et al., ICLR 2020)."""

from .method import VAEEnergy
from .model import ConvVAE
from .projection import energy, project
from . import export as _export  # noqa: F401  (registers the ONNX exporter)

__all__ = ["ConvVAE", "VAEEnergy", "energy", "project"]
