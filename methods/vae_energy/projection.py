"""Iterative energy-based projection onto the normal-data manifold (Dehaene et al., ICLR 2020).

E(x) = L_r(x) + lambda * ||x - x0||_1 with L_r(x) the VAE's reconstruction loss of x against f(x) (optionally
plus the KL term), f the deterministic VAE reconstruction. Each step moves every pixel against the gradient of
E, taken at the current x_t, weighted by its squared reconstruction error:

    x_{t+1} = x_t - alpha * grad_x E(x_t) * (x_t - f(x_t))^2
"""

from __future__ import annotations

import torch

from .losses import kl_divergence, reconstruction_loss
from .model import ConvVAE


def energy(model: ConvVAE, x: torch.Tensor, x0: torch.Tensor, lam: float = 1.0, loss: str = "bce",
           kl_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(E(x) per image [B], reconstruction f(x) [B, C, S, S]) for images ``x`` near the originals ``x0``."""
    mu, logvar = model.encode(x)
    recon = model.decode(mu)
    e = reconstruction_loss(recon, x, loss) + lam * (x - x0).abs().flatten(1).sum(dim=1)
    if kl_weight:
        e = e + kl_weight * kl_divergence(mu, logvar)
    return e, recon


def project(model: ConvVAE, x0: torch.Tensor, steps: int = 100, alpha: float = 0.05, lam: float = 1.0,
            loss: str = "bce", kl_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Project a batch ``x0`` [B, C, S, S] in [0, 1]: returns (x_T [B, C, S, S], f(x0) [B, C, S, S]).

    The model must be in eval mode; its parameters get no gradient (only the input does). Images are
    independent in the batch (BatchNorm uses running statistics), so the summed energy gives per-image gradients.
    """
    if model.training:
        raise RuntimeError("project() needs the model in eval mode (BatchNorm running statistics)")
    grad_flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        x0 = x0.detach()
        x = x0.clone()
        recon0 = None
        for _ in range(steps):
            x.requires_grad_(True)
            with torch.enable_grad():
                e, recon = energy(model, x, x0, lam, loss, kl_weight)  # [B], [B, C, S, S]
                (grad,) = torch.autograd.grad(e.sum(), x)  # [B, C, S, S]
            recon = recon.detach()
            if recon0 is None:
                recon0 = recon
            with torch.no_grad():
                x = (x - alpha * grad * (x - recon) ** 2).clamp_(0, 1)
        if recon0 is None:  # steps == 0
            with torch.no_grad():
                recon0 = model.reconstruct(x0)
        return x.detach(), recon0
    finally:
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
