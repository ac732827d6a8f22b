"""CutPaste network as a pure nn.Module: pooled backbone features -> projection head -> 2- or 3-way classifier."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from adbench.backbones import build_backbone
from adbench.data.errors import ConfigError


def strip_classifier(model: nn.Module) -> nn.Module:
    """Turn an ImageNet classifier into a pooled-feature extractor [B, 3, H, W] -> [B, D] (in place).

    timm models drop their head with ``reset_classifier(0)``; for torchvision models the last ``nn.Linear``
    becomes an identity, together with its ``nn.Sequential`` parent when that holds only dropout besides
    (e.g. MobileNetV2's dropout + linear).
    """
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(0)
        return model
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(f"backbone {type(model).__name__} has no linear classifier to replace")
    target = names[-1]
    parent_name = target.rpartition(".")[0]
    if parent_name:
        parent = model.get_submodule(parent_name)
        if isinstance(parent, nn.Sequential) and all(isinstance(m, (nn.Linear, nn.Dropout)) for m in parent):
            target = parent_name
    owner, _, leaf = target.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, nn.Identity())
    return model


def build_encoder(name: str, weights: str | None) -> tuple[nn.Module, int]:
    """(backbone without its classifier, feature dimension D) for a torchvision or ``timm/`` backbone."""
    enc = strip_classifier(build_backbone(name, weights))
    was_training = enc.training
    enc.eval()
    with torch.no_grad():
        out = enc(torch.zeros(1, 3, 64, 64))
    enc.train(was_training)
    if out.ndim != 2:
        raise ConfigError(f"backbone {name!r} does not end in pooled features (output shape {tuple(out.shape)})")
    return enc, int(out.shape[1])


class CutPasteNet(nn.Module):
    """Encoder + projection head (Linear-BatchNorm-ReLU per entry of ``head_dims``) + linear classifier."""

    def __init__(self, encoder: nn.Module, feat_dim: int, head_dims: Sequence[int], n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        layers: list[nn.Module] = []
        last = feat_dim
        for d in head_dims:
            layers += [nn.Linear(last, int(d)), nn.BatchNorm1d(int(d)), nn.ReLU(inplace=True)]
            last = int(d)
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> (pooled features [B, D], logits [B, K])."""
        feats = self.encoder(x)  # [B, D]
        return feats, self.classifier(self.head(feats))

    def embed(self, x: torch.Tensor, where: str = "pooled") -> torch.Tensor:
        """Embeddings for the density: ``pooled`` backbone features [B, D] or the ``head`` output [B, d]."""
        feats = self.encoder(x)
        return feats if where == "pooled" else self.head(feats)


def freeze_before(model: nn.Module, first_trainable: str | None) -> list[str]:
    """Freeze every parameter registered before the module ``first_trainable`` (None: freeze nothing).

    Returns the names of the frozen modules that hold batch-norm layers; :func:`set_train_mode` keeps those
    in eval mode so their ImageNet statistics stay.
    """
    if not first_trainable:
        return []
    names = [n for n, _ in model.named_modules()]
    if first_trainable not in names:
        sample = [n for n in names if n and n.count(".") <= 1][:15]
        raise ConfigError(f"method.backbone.train_from={first_trainable!r} is not a module of the backbone; "
                          f"e.g. {sample}")
    frozen_bn: list[str] = []
    for name, module in model.named_modules():
        if name == first_trainable:
            break
        for p in module.parameters(recurse=False):
            p.requires_grad_(False)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen_bn.append(name)
    return frozen_bn


def set_train_mode(model: nn.Module, frozen_bn: Sequence[str], encoder_frozen: bool = False) -> None:
    """``model.train()`` except frozen batch-norm layers (and the whole encoder when ``encoder_frozen``)."""
    model.train()
    if encoder_frozen:
        model.encoder.eval()
        return
    for name in frozen_bn:
        model.encoder.get_submodule(name).eval()
