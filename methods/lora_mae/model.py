"""Masked autoencoder (He et al., 2021) on timm ViT blocks: patchify, random masking, encoder, light decoder.

Parameter names follow MAE / timm ViT checkpoints (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N``, ``norm``, ``decoder_*``) so pretrained encoders load by name. Position embeddings are fixed 2-D
sine-cosine tables held as buffers (MAE does not train them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, Mapping

import torch
from timm.models.vision_transformer import Block
from torch import nn

from adbench.data.errors import ConfigError


@dataclass(frozen=True)
class MAEArch:
    """Shape of an MAE: patch size, encoder and decoder widths / depths / heads."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    mlp_ratio: float = 4.0


# The model is built for the data's input size; the comments give the size each was designed for.
ARCHITECTURES: dict[str, MAEArch] = {
    # ViT-L/7 at 224 px (32x32 grid); MAE ViT-L/16 weights fit after re-initialising the patch embedding: GPU default
    "mae_vit_large_patch7": MAEArch(7, 1024, 24, 16, 512, 8, 16),
    # ViT-B/7 at 224 px (32x32 grid); MAE ViT-B/16 weights fit the same way
    "mae_vit_base_patch7": MAEArch(7, 768, 12, 12, 512, 8, 16),
    # ViT-B/16 at MAE's own patch size (14x14 grid at 224 px)
    "mae_vit_base_patch16": MAEArch(16, 768, 12, 12, 512, 8, 16),
    # a small CPU model: 6 narrow blocks, 2-block decoder, 8-px patches (8x8 grid at the cpu preset's 64 px)
    "mae_vit_cpu_patch8": MAEArch(8, 192, 6, 3, 128, 2, 4),
}


def resolve_arch(name: str, overrides: Mapping[str, Any] | None = None) -> MAEArch:
    """The named architecture with non-null ``overrides`` (``method.model.*``) applied."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown method.arch={name!r}; known: {', '.join(ARCHITECTURES)}")
    fields = set(asdict(ARCHITECTURES[name]))
    changes = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    bad = sorted(set(changes) - fields)
    if bad:
        raise ConfigError(f"method.model has unknown key(s) {bad}; allowed: {', '.join(sorted(fields))}")
    arch = replace(ARCHITECTURES[name], **changes)
    for enc, heads, what in ((arch.embed_dim, arch.num_heads, "embed_dim/num_heads"),
                             (arch.decoder_embed_dim, arch.decoder_num_heads, "decoder_embed_dim/decoder_num_heads")):
        if enc % heads:
            raise ConfigError(f"method.model.{what}: width {enc} is not divisible by {heads} heads")
    for key in ("embed_dim", "decoder_embed_dim"):
        if getattr(arch, key) % 4:
            raise ConfigError(f"method.model.{key}={getattr(arch, key)} must be divisible by 4 (2-D sin-cos position table)")
    return arch


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table [1, (1 +) h*w, dim]; half the channels code rows, half columns."""
    h, w = grid
    quarter = dim // 4
    freq = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))  # [dim/4]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angle = coord[:, None] * freq[None]  # [h*w, dim/4]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat(parts, dim=1).float()  # [h*w, dim]
    if cls_token:
        table = torch.cat([torch.zeros(1, dim), table], dim=0)
    return table[None]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution: [B, C, H, W] -> tokens [B, h*w, D]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def random_keep(batch: int, n_patches: int, mask_ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Indices [B, L_keep] of the visible patches of a uniform random mask hiding ``mask_ratio`` of them."""
    n_keep = max(1, int(round(n_patches * (1.0 - mask_ratio))))
    noise = torch.rand(batch, n_patches, generator=generator)  # [B, L] on CPU: same numbers on every device
    return noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values.to(device)


def hidden_from_keep(ids_keep: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Float mask [B, L]: 1 for hidden patches, 0 for the visible ones listed in ``ids_keep`` [B, L_keep]."""
    hidden = torch.ones(ids_keep.shape[0], n_patches, device=ids_keep.device)
    return hidden.scatter_(1, ids_keep, 0.0)


class MaskedAutoencoderViT(nn.Module):
    """MAE for ``img_size`` inputs: encoder on visible patches, decoder predicts every patch's pixels."""

    def __init__(self, arch: MAEArch, img_size: tuple[int, int], in_chans: int = 3, norm_pix_loss: bool = True) -> None:
        super().__init__()
        p = arch.patch_size
        if img_size[0] % p or img_size[1] % p:
            raise ConfigError(
                f"input size {img_size[0]}x{img_size[1]} is not divisible by the patch size {p}; change "
                f"dataset.crop_size (or dataset.image_size) or method.model.patch_size"
            )
        self.arch = arch
        self.patch_size = p
        self.in_chans = in_chans
        self.grid = (img_size[0] // p, img_size[1] // p)
        self.num_patches = self.grid[0] * self.grid[1]
        self.norm_pix_loss = norm_pix_loss
        norm = partial(nn.LayerNorm, eps=1e-6)
        d, dd = arch.embed_dim, arch.decoder_embed_dim

        self.patch_embed = PatchEmbed(p, in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", sincos_pos_embed(d, self.grid))  # [1, 1+L, D]
        self.blocks = nn.ModuleList(
            Block(d, arch.num_heads, arch.mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(arch.depth))
        self.norm = norm(d)

        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(dd, self.grid))  # [1, 1+L, Dd]
        self.decoder_blocks = nn.ModuleList(
            Block(dd, arch.decoder_num_heads, arch.mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(arch.decoder_depth))
        self.decoder_norm = norm(dd)
        self.decoder_pred = nn.Linear(dd, p * p * in_chans)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE's initialisation: xavier-uniform linears and patch projection, N(0, 0.02) tokens."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.reset_patch_embed()
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def reset_patch_embed(self) -> None:
        """Fresh patch projection: xavier-uniform on the flattened kernel, zero bias."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)

    # --- pixels <-> patches -------------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, L, p*p*C] (row-major patches, pixels ordered row, column, channel)."""
        b, c, _, _ = imgs.shape
        p, (h, w) = self.patch_size, self.grid
        x = imgs.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)  # [B, h, w, p, p, C]
        return x.reshape(b, h * w, p * p * c)

    def unpatchify(self, patches: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """[B, L, p*p*C] -> [B, C, H, W], the inverse of :meth:`patchify`."""
        b = patches.shape[0]
        c = channels or self.in_chans
        p, (h, w) = self.patch_size, self.grid
        x = patches.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, p]
        return x.reshape(b, c, h * p, w * p)

    def targets(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch targets [B, L, p*p*C] (per-patch normalised with ``norm_pix_loss``), their means and stds [B, L, 1]."""
        target = self.patchify(imgs)
        if not self.norm_pix_loss:
            return target, torch.zeros_like(target[..., :1]), torch.ones_like(target[..., :1])
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return (target - mean) / std, mean, std

    # --- network ------------------------------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] and visible indices [B, K] -> latent tokens [B, 1+K, D] (cls first)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # [B, L, D]
        d = x.shape[-1]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, d))  # [B, K, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # [B, 1, D]
        x = torch.cat([cls, x], dim=1)  # [B, 1+K, D]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Latent [B, 1+K, D] -> predicted patches [B, L, p*p*C]; hidden positions start from the mask token."""
        y = self.decoder_embed(latent)  # [B, 1+K, Dd]
        b, _, dd = y.shape
        tokens = self.mask_token.expand(b, self.num_patches, dd)  # [B, L, Dd]
        tokens = tokens.scatter(1, ids_keep[..., None].expand(-1, -1, dd), y[:, 1:])  # visible tokens in place
        y = torch.cat([y[:, :1], tokens], dim=1) + self.decoder_pos_embed  # [B, 1+L, Dd]
        for blk in self.decoder_blocks:
            y = blk(y)
        return self.decoder_pred(self.decoder_norm(y))[:, 1:]  # [B, L, p*p*C]

    def forward(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W], visible indices [B, K] -> predicted patches [B, L, p*p*C]."""
        return self.forward_decoder(self.forward_encoder(imgs, ids_keep), ids_keep)

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the hidden patches only."""
        target, _, _ = self.targets(imgs)  # [B, L, p*p*C]
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # [B, L]
        hidden = hidden_from_keep(ids_keep, self.num_patches)  # [B, L]
        return (per_patch * hidden).sum() / hidden.sum().clamp(min=1.0)

    @torch.no_grad()
    def residual(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Reconstruction minus input [B, C, H, W] of the predicted patches, in the input's space.

        With ``norm_pix_loss`` the prediction is mapped back with each target patch's own mean and std,
        as in MAE's visualisation.
        """
        target, mean, std = self.targets(imgs)
        recon = pred.float() * std + mean  # [B, L, p*p*C]
        return self.unpatchify(recon - (target * std + mean))  # [B, C, H, W]

    @torch.no_grad()
    def pixel_error(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Squared error per pixel [B, H, W] (channel mean) of the predicted patches in the input's space."""
        return self.residual(imgs, pred).pow(2).mean(dim=1)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; buffers such as the fixed position tables are not parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def interpolate_pos_embed(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a position table [1, P+n*m, D] (P = 0 or 1 prefix tokens, square n x m = n*n grid) to ``grid``.

    Prefix (class-token) rows are kept; the grid part is resized bicubically.
    """
    n_tokens, dim = table.shape[1], table.shape[2]
    for prefix in (0, 1):
        side = math.isqrt(n_tokens - prefix)
        if side * side == n_tokens - prefix and side > 0:
            break
    else:
        raise ValueError(f"position table with {n_tokens} tokens is neither n*n nor 1+n*n")
    if (side, side) == tuple(grid):
        return table
    head, body = table[:, :prefix], table[:, prefix:]
    body = body.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()  # [1, D, n, n]
    body = nn.functional.interpolate(body, size=tuple(grid), mode="bicubic", align_corners=False)
    body = body.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(table.dtype)
    if prefix == 0:  # our tables always carry a class-token row
        head = torch.zeros(1, 1, dim, dtype=table.dtype)
    return torch.cat([head, body], dim=1)
