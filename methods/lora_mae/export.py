"""LoRA-MAE has no ONNX export in this version: the exporter says so in one line."""

from __future__ import annotations

from torch import nn

from adbench.export import NotExportable, register_exporter


@register_exporter("lora_mae")
def export_module(method) -> nn.Module:
    """Always raises :class:`~adbench.export.NotExportable` with the reason."""
    raise NotExportable("lora_mae is not exportable because its graph (K deterministic masks, per-mask token "
                        "gathers and LoRA-merged ViT reconstruction) has no ONNX exporter in this adbench version; "
                        "score it with engine=torch")
