"""Convolutional VAE of Dehaene et al. (ICLR 2020), as a pure nn.Module."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _down(c_in: int, c_out: int) -> nn.Sequential:
    """Strided conv halving the side, BatchNorm, LeakyReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.2, inplace=True))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Transposed conv doubling the side, BatchNorm, LeakyReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.2, inplace=True))


class ConvVAE(nn.Module):
    """Images [B, C, S, S] in [0, 1] -> latent Gaussian (z_dim) -> reconstruction [B, C, S, S] in (0, 1).

    Encoder: one strided conv block per entry of ``channels`` (side / 2 each), then a fully connected layer to
    the mean and log-variance. Decoder: fully connected back to the last feature map, transposed conv blocks in
    mirrored order, a last transposed conv to ``in_channels`` and a sigmoid.
    """

    def __init__(self, in_channels: int = 3, input_size: int = 128, channels: Sequence[int] = (32, 64, 128, 256, 512),
                 z_dim: int = 512) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        n = len(channels)
        if n < 1 or input_size % (2**n) != 0:
            raise ValueError(f"input_size={input_size} must be divisible by 2**len(channels)={2**n}")
        self.in_channels = in_channels
        self.input_size = input_size
        self.z_dim = z_dim
        self.side = input_size // 2**n  # side of the last feature map
        self.last = channels[-1]
        flat = self.last * self.side * self.side

        blocks = [_down(c_in, c_out) for c_in, c_out in zip([in_channels] + channels[:-1], channels)]
        self.encoder = nn.Sequential(*blocks)
        self.to_stats = nn.Linear(flat, 2 * z_dim)
        self.from_z = nn.Sequential(nn.Linear(z_dim, flat), nn.LeakyReLU(0.2, inplace=True))
        rev = channels[::-1]
        ups = [_up(c_in, c_out) for c_in, c_out in zip(rev[:-1], rev[1:])]
        ups.append(nn.ConvTranspose2d(rev[-1], in_channels, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(*ups)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, S, S] -> (mu [B, z], logvar [B, z])."""
        h = self.encoder(x).flatten(1)  # [B, last*side*side]
        mu, logvar = self.to_stats(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, z] -> [B, C, S, S] in (0, 1)."""
        h = self.from_z(z).view(-1, self.last, self.side, self.side)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass with the reparameterisation trick: (reconstruction, mu, logvar)."""
        mu, logvar = self.encode(x)
        z = mu
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction f(x) = decode(mu(x)): [B, C, S, S]."""
        return self.decode(self.encode(x)[0])
