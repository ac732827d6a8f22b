"""LoRA (Hu et al., 2021) via loralib on the MAE encoder's Linear layers, and the freezing policy."""

from __future__ import annotations

from typing import Iterable

import loralib
from torch import nn

from adbench.data.errors import ConfigError

ATTENTION_TARGETS = ("attn.qkv", "attn.proj")
MLP_TARGETS = ("mlp.fc1", "mlp.fc2")


def _to_lora(linear: nn.Linear, rank: int, alpha: float, dropout: float) -> loralib.Linear:
    """A loralib Linear sharing ``linear``'s weight and bias, with a zero-initialised low-rank update."""
    new = loralib.Linear(linear.in_features, linear.out_features, r=rank, lora_alpha=alpha, lora_dropout=dropout,
                         bias=linear.bias is not None, merge_weights=False,  # keep W and A, B apart in state dicts
                         device=linear.weight.device, dtype=linear.weight.dtype)
    new.weight = linear.weight
    if linear.bias is not None:
        new.bias = linear.bias
    return new


def apply_lora(blocks: Iterable[nn.Module], rank: int = 4, alpha: float = 1.0, dropout: float = 0.0,
               mlp: bool = False) -> list[str]:
    """Replace the qkv and output projections (and with ``mlp`` the MLP layers) of each block by LoRA layers.

    Returns the replaced module names relative to a block (e.g. ``3.attn.qkv``).
    """
    if rank < 1:
        raise ConfigError(f"method.lora.rank={rank} must be >= 1")
    targets = ATTENTION_TARGETS + (MLP_TARGETS if mlp else ())
    replaced = []
    for i, block in enumerate(blocks):
        for target in targets:
            parent_name, child_name = target.split(".")
            parent = getattr(block, parent_name)
            child = getattr(parent, child_name)
            if not isinstance(child, nn.Linear):
                raise TypeError(f"block {i}: {target} is a {type(child).__name__}, not nn.Linear")
            if isinstance(child, loralib.Linear):
                continue
            setattr(parent, child_name, _to_lora(child, rank, alpha, dropout))
            replaced.append(f"{i}.{target}")
    return replaced


def is_lora_param(name: str) -> bool:
    """True for loralib's low-rank factors (``lora_A`` / ``lora_B``)."""
    return "lora_" in name


TRAINABLE_SETS = ("adapters_decoder", "reference")


def set_trainable(model: nn.Module, freeze_non_lora: bool, train_patch_embed: bool,
                  trainable_set: str = "adapters_decoder") -> None:
    """Freeze the pretrained encoder except LoRA factors; what else trains depends on ``trainable_set``.

    ``adapters_decoder``: the LoRA factors, the whole decoder (``decoder_*``, ``mask_token``) and, with
    ``train_patch_embed``, the patch embedding. ``reference`` (the reference code's loralib
    ``mark_only_lora_as_trainable`` on the encoder and decoder blocks): inside ``blocks`` and ``decoder_blocks``
    only LoRA factors train (decoder blocks need LoRA layers, see :func:`apply_lora`); every parameter outside
    them trains (``cls_token``, ``norm``, ``decoder_embed``, ``mask_token``, ``decoder_norm``, ``decoder_pred``;
    the patch embedding per ``train_patch_embed``). With ``freeze_non_lora`` false every parameter trains.
    """
    if trainable_set not in TRAINABLE_SETS:
        raise ConfigError(f"method.trainable_set={trainable_set!r} must be one of {', '.join(TRAINABLE_SETS)}")
    for name, p in model.named_parameters():
        if not freeze_non_lora:
            p.requires_grad_(True)
        elif is_lora_param(name):
            p.requires_grad_(True)
        elif name.startswith("patch_embed."):
            p.requires_grad_(train_patch_embed)
        elif trainable_set == "reference":
            p.requires_grad_(not name.startswith(("blocks.", "decoder_blocks.")))
        elif name.startswith(("decoder_", "mask_token")):
            p.requires_grad_(True)
        else:  # cls_token, blocks.* (W and biases), norm.*
            p.requires_grad_(False)
