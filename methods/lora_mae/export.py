"""LoRA-MAE as one ONNX-exportable module: the K masked reconstructions, the error map and its smoothing.

The K inference masks are fixed, so each pass is the MAE with constant visible indices (a gather of the visible
tokens, a scatter of them among the mask tokens before the decoder); the K residuals are summed under their
fixed pixel masks as :meth:`~methods.lora_mae.method.LoRAMAE.residuals` does. loralib's LoRA layers are merged
into plain ``Linear`` weights (``W + B A * alpha / r``, computed in float64): in eval mode with dropout off that
is the same function. ``inference.standardize`` uses the checkpoint's held-out statistics; the reflect-padded
Gaussian smoothing and the max / top-k image score follow :mod:`methods.lora_mae.method`.
"""

from __future__ import annotations

import copy

import loralib
import torch
from torch import nn

from adbench.export import register_exporter

from .masks import visible_indices
from .method import gaussian_blur, image_scores, map_of_kind
from .model import MaskedAutoencoderViT


def merged_linear(layer: loralib.Linear) -> nn.Linear:
    """A plain ``nn.Linear`` computing what ``layer`` computes in eval mode (the low-rank update folded in)."""
    weight = layer.weight.detach().double()
    if layer.fan_in_fan_out:
        weight = weight.t()
    if layer.r > 0 and not layer.merged:
        weight = weight + (layer.lora_B.detach().double() @ layer.lora_A.detach().double()) * layer.scaling
    out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    out.weight.data = weight.float().contiguous()
    if layer.bias is not None:
        out.bias.data = layer.bias.detach().float().clone()
    return out


def merge_lora(model: MaskedAutoencoderViT) -> MaskedAutoencoderViT:
    """A copy of ``model`` with every loralib ``Linear`` replaced by its merged ``nn.Linear`` (eval mode)."""
    model = copy.deepcopy(model).cpu().eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, loralib.Linear):
                setattr(parent, name, merged_linear(child))
    return model


class LoRAMAEGraph(nn.Module):
    """Normalised images [B, 3, H, W] -> (image scores [B], smoothed maps [B, H, W]) of a fitted LoRA-MAE."""

    def __init__(self, model: MaskedAutoencoderViT, hidden: torch.Tensor, standardize: str,
                 stats: dict[str, torch.Tensor] | None, floor: float, sigma: float, radius: int | None,
                 how: str, topk: int) -> None:
        super().__init__()
        self.model = merge_lora(model)
        p2 = self.model.patch_size ** 2
        self.n_masks = int(hidden.shape[0])
        for k, h in enumerate(hidden.cpu()):  # per pass: visible patch indices and the pixels it scores
            self.register_buffer(f"keep_{k}", visible_indices(h)[None])  # [1, L_keep]
            pixels = self.model.unpatchify(h.float()[None, :, None].expand(1, -1, p2), channels=1)  # [1, 1, H, W]
            self.register_buffer(f"pixels_{k}", pixels)
        self.standardize, self.floor = standardize, floor
        self.stat_keys = {"error": ["err_mean", "err_std"], "residual": ["res_mean", "res_std"]}.get(standardize, [])
        for key in self.stat_keys:
            self.register_buffer(key, stats[key].float())
        self.sigma, self.radius = sigma, radius
        self.how, self.topk = how, topk

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction minus input [B, 3, H, W], each pixel from the pass hiding it."""
        out = torch.zeros_like(x)
        for k in range(self.n_masks):
            keep = getattr(self, f"keep_{k}").expand(x.shape[0], -1)  # [B, L_keep]
            out = out + self.model.residual(x, self.model(x, keep)) * getattr(self, f"pixels_{k}")
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = {key: getattr(self, key) for key in self.stat_keys}
        maps = map_of_kind(self.residuals(x), self.standardize, stats, self.floor)  # [B, H, W], as the method
        maps = gaussian_blur(maps, self.sigma, self.radius)
        return image_scores(maps, self.how, self.topk), maps


@register_exporter("lora_mae")
def export_module(method) -> nn.Module:
    """The :class:`LoRAMAEGraph` of a loaded :class:`~methods.lora_mae.LoRAMAE` (LoRA merged)."""
    inf = method.cfg.inference
    how = method.standardize  # standardize=auto: the kind chosen at fit
    radius = inf.get("smoothing_radius")
    graph = LoRAMAEGraph(method.model, method.hidden, how, method.stats, float(inf.get("std_floor", 0.1)),
                         float(inf.smoothing_sigma), None if radius is None else int(radius), str(inf.image_score),
                         int(inf.topk))
    graph.export_note = (f"{graph.n_masks} fixed-mask reconstructions" + (", LoRA merged" if method.use_lora else "")
                         + ("" if how == "none" else f", standardize={how}"))
    return graph
