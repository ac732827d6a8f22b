"""LoRA-MAE: a masked-autoencoder ViT with low-rank adapters, scored by deterministic multi-mask reconstruction."""

from .lora import apply_lora, set_trainable
from .masks import interleaved_masks
from .method import LoRAMAE
from .model import ARCHITECTURES, MaskedAutoencoderViT, count_parameters, interpolate_pos_embed, resolve_arch
from .pretrained import load_into, load_pretrained
from . import export as _export  # noqa: F401  (registers the ONNX exporter)

__all__ = [
    "ARCHITECTURES", "LoRAMAE", "MaskedAutoencoderViT", "apply_lora", "count_parameters", "interleaved_masks",
    "interpolate_pos_embed", "load_into", "load_pretrained", "resolve_arch", "set_trainable",
]
