"""VAE with iterative energy-based projection (Dehaene et al., ICLR 2020)."""

from .method import VAEEnergy
from .model import ConvVAE
from .projection import energy, project

__all__ = ["ConvVAE", "VAEEnergy", "energy", "project"]
