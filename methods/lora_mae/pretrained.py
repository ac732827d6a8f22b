"""Pretrained MAE encoders: timm hub weights or a local checkpoint (FAIR ``{'model': ...}`` or timm state dict).

Loading adapts the checkpoint to the model: position tables are interpolated to the model's patch grid, the
patch embedding is left freshly initialised when its kernel differs (another patch size), and decoder weights
are taken when the file has them with matching shapes (FAIR's "visualize" checkpoints) and ignored otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adbench.backbones import WeightsError
from adbench.data.errors import ConfigError

from .model import MaskedAutoencoderViT, interpolate_pos_embed

log = logging.getLogger("adbench.lora_mae")

TIMM_MAE_WEIGHTS = ("vit_large_patch16_224.mae", "vit_base_patch16_224.mae", "vit_huge_patch14_224.mae")
POS_TABLES = ("pos_embed", "decoder_pos_embed")
PATCH_EMBED = ("patch_embed.proj.weight", "patch_embed.proj.bias")


@dataclass
class LoadReport:
    """What a checkpoint supplied: its source, loaded keys, and which parts stayed freshly initialised."""

    source: str
    loaded: list[str] = field(default_factory=list)
    patch_embed_reinit: bool = False
    decoder_loaded: bool = False
    pos_embed_interpolated: bool = False


def is_none(spec: object) -> bool:
    """True for the spellings of 'no pretrained weights'."""
    return spec is None or str(spec).strip().lower() in ("", "none", "null", "false")


def _offline_help(name: str) -> str:
    return (
        f"cannot get MAE weights {name!r} through timm (offline, or not in the Hugging Face cache). Either pass a "
        f"local checkpoint with method.pretrained=/path/to/mae_pretrain_vit_large.pth (FAIR format with a 'model' "
        f"key, or a timm state dict), put the weights in the Hugging Face cache (HF_HOME; set HF_HUB_OFFLINE=1 to "
        f"skip network retries), or train from scratch with method.pretrained=none"
    )


def timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    """State dict of timm model ``name`` with pretrained weights (timm's normal hub download and cache)."""
    import timm

    name = name.removeprefix("timm/")  # adbench's backbone spelling
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ConfigError(
                f"method.pretrained={name!r} is neither an existing file nor a timm model; use one of "
                f"{', '.join(TIMM_MAE_WEIGHTS)}, a path to a checkpoint, or none") from None
        raise WeightsError(f"{_offline_help(name)} ({err})") from None
    except (OSError, ValueError) as err:  # huggingface_hub's offline / not-cached errors are OSErrors
        raise WeightsError(f"{_offline_help(name)} ({type(err).__name__})") from None
    return model.state_dict()


def file_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint: FAIR's ``{'model': state}``, ``{'state_dict': ...}`` or a bare state dict."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"pretrained checkpoint not found: {p} (from method.pretrained)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpicklable or corrupt file
        raise WeightsError(
            f"cannot read pretrained checkpoint {p} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            f"if it stores non-tensor objects, re-save only its weights: "
            f"torch.save(torch.load(f, weights_only=False)['model'], 'weights.pth')") from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"pretrained checkpoint {p} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def get_state_dict(spec: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, source description) for ``method.pretrained``: a path if it exists, else a timm name."""
    path = Path(str(spec)).expanduser()
    hub_name = str(spec).startswith(("hf-hub:", "hf_hub:", "timm/"))
    looks_like_path = not hub_name and (path.suffix in (".pth", ".pt", ".bin", ".ckpt") or "/" in str(spec))
    if path.is_file() or looks_like_path:
        return file_state_dict(path), f"file {path}"
    return timm_state_dict(str(spec)), f"timm {spec}"


def load_into(model: MaskedAutoencoderViT, state: dict[str, torch.Tensor], source: str = "state dict") -> LoadReport:
    """Copy matching tensors of an MAE / ViT ``state`` into ``model``, adapting position tables and patch size."""
    if "blocks.0.attn.qkv.weight" not in state:
        raise WeightsError(f"{source} is not a ViT / MAE encoder checkpoint (no blocks.0.attn.qkv.weight)")
    report = LoadReport(source=source)
    own = model.state_dict()
    kernel = state.get(PATCH_EMBED[0])
    if kernel is not None and kernel.shape != own[PATCH_EMBED[0]].shape and kernel.shape[0] == own[PATCH_EMBED[0]].shape[0]:
        report.patch_embed_reinit = True  # another patch size: keep the fresh projection (kernel and bias)
    take: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in state.items():
        if key not in own or ".lora_" in key or (report.patch_embed_reinit and key in PATCH_EMBED):
            continue  # classification heads, fc_norm, LoRA factors of another run, a patch kernel of another size
        if key in POS_TABLES and value.shape != own[key].shape and value.shape[-1] == own[key].shape[-1]:
            value = interpolate_pos_embed(value, model.grid)
            report.pos_embed_interpolated = True
        if value.shape != own[key].shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            continue
        take[key] = value
    if mismatched:
        raise WeightsError(
            f"{source} does not fit method.arch (embed_dim={model.arch.embed_dim}, depth={model.arch.depth}): "
            f"{len(mismatched)} shape mismatches, e.g. {mismatched[:3]}; pick the matching arch "
            f"(vit_large -> mae_vit_large_patch7, vit_base -> mae_vit_base_patch7)")
    encoder = [k for k in own if not k.startswith(("decoder_", "mask_token"))]
    missing = [k for k in encoder if k not in take and not (report.patch_embed_reinit and k in PATCH_EMBED)]
    if missing:
        raise WeightsError(
            f"{source} lacks {len(missing)} encoder tensors of method.arch, e.g. {missing[:3]} (depth "
            f"{model.arch.depth}); pick the arch matching the checkpoint")
    with torch.no_grad():
        for key, value in take.items():
            own[key].copy_(value.to(own[key].dtype))
        if report.patch_embed_reinit:
            model.reset_patch_embed()
    report.loaded = sorted(take)
    report.decoder_loaded = any(k.startswith("decoder_blocks.") for k in take)
    log.info("pretrained %s: %d tensors loaded%s%s%s", source, len(take),
             ", patch embedding re-initialised (other patch size)" if report.patch_embed_reinit else "",
             ", position tables interpolated" if report.pos_embed_interpolated else "",
             ", decoder loaded" if report.decoder_loaded else ", decoder trained from scratch")
    return report


def load_pretrained(model: MaskedAutoencoderViT, spec: str) -> LoadReport:
    """Load ``method.pretrained`` (timm name or local file) into ``model``."""
    state, source = get_state_dict(spec)
    return load_into(model, state, source)
