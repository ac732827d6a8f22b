"""VAE losses, summed per image: reconstruction (BCE, L2 or SSIM) and the Gaussian KL term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adbench.data.errors import ConfigError

RECON_LOSSES = ("bce", "l2", "ssim")


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D Gaussian kernel [C, 1, size, size] summing to 1."""
    t = torch.arange(size, device=like.device, dtype=like.dtype) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of images [B, C, H, W] in [0, 1] (Gaussian window, reflect padding) -> [B, C, H, W]."""
    c = a.shape[1]
    w = _gaussian_window(window, sigma, c, a)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Per-image reconstruction loss [B] of ``recon`` against target ``x`` (both [B, C, H, W] in [0, 1]).

    ``bce``: binary cross-entropy summed over pixels; ``l2``: squared error summed over pixels; ``ssim``:
    (1 - SSIM) / 2 summed over pixels.
    """
    if kind == "bce":
        per_px = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), x, reduction="none")
    elif kind == "l2":
        per_px = (recon - x) ** 2
    elif kind == "ssim":
        per_px = (1 - ssim_map(recon, x)) / 2
    else:
        raise ConfigError(f"method.loss={kind!r} is not one of {', '.join(RECON_LOSSES)}")
    return per_px.flatten(1).sum(dim=1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample: [B, z] -> [B]."""
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=1)
