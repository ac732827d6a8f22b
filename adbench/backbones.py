"""Pretrained backbones from torchvision or timm, and a feature extractor over named layers.

Weights: ``imagenet`` (the standard torchvision / timm cache, downloaded on first use), ``none`` (random
init), or a path to a local state-dict file. Offline without cached weights raises :class:`WeightsError`
with the ways out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import torch
import torchvision
from torch import nn

from .data.errors import ConfigError

# The stages PatchCore-style methods read by default: a stride-8 and a stride-16 map.
DEFAULT_LAYERS: dict[str, list[str]] = {
    "wide_resnet50_2": ["layer2", "layer3"],
    "wide_resnet101_2": ["layer2", "layer3"],
    "resnet18": ["layer2", "layer3"],
    "resnet34": ["layer2", "layer3"],
    "resnet50": ["layer2", "layer3"],
    "mobilenet_v2": ["features.6", "features.13"],  # 32 ch at stride 8, 96 ch at stride 16
    "efficientnet_b0": ["features.3", "features.5"],
    "timm/mobilenetv2_100": ["blocks.2", "blocks.4"],
    "timm/resnet18": ["layer2", "layer3"],
    "timm/wide_resnet50_2": ["layer2", "layer3"],
}


class WeightsError(ConfigError):
    """Pretrained weights cannot be obtained (offline, missing or incompatible file)."""


def _offline_help(name: str, where: str) -> str:
    return (
        f"cannot get ImageNet weights for backbone {name!r} (offline?). Either seed the cache: put the file at "
        f"{where}, pass a local file with "
        f"method.backbone.weights=/path/file.pth, or run without pretraining: method.backbone.weights=none"
    )


def _is_timm(name: str) -> bool:
    return name.startswith("timm/")


def _torchvision_model(name: str, weights: str) -> nn.Module:
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ConfigError(
            f"unknown backbone {name!r}: not a torchvision model; use a torchvision name such as "
            f"wide_resnet50_2, resnet18 or mobilenet_v2, or 'timm/<name>' for a timm model"
        ) from None
    if weights != "imagenet":
        return builder(weights=None)
    enum = torchvision.models.get_model_weights(name)
    w = enum["IMAGENET1K_V1"] if "IMAGENET1K_V1" in enum.__members__ else enum.DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    try:
        return builder(weights=w)
    except Exception as err:  # noqa: BLE001 - with the file in the cache nothing is downloaded: it is the file
        if cached.is_file():
            raise WeightsError(f"cached weights file {cached} {_unreadable(cached, err)}; delete it and run again "
                               f"(it is downloaded again)") from None
        if not isinstance(err, (OSError, RuntimeError)):  # URLError is an OSError
            raise
        raise WeightsError(_offline_help(
            name, f"{cached} (or set TORCH_HOME to a folder whose hub/checkpoints holds {cached.name})")) from None


def _timm_model(name: str, weights: str) -> nn.Module:
    import timm

    tname = name[len("timm/"):]
    try:
        return timm.create_model(tname, pretrained=(weights == "imagenet"))
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ConfigError(f"unknown backbone {name!r}: timm has no model {tname!r}") from None
        raise
    except OSError:
        hub = Path.home() / ".cache" / "huggingface" / "hub"
        raise WeightsError(_offline_help(name, f"{hub} (the Hugging Face cache; HF_HOME moves it)")) from None


def _unreadable(path: Path, err: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words (torch's own text, which suggests loading
    with ``weights_only=False``, is never shown: that would run whatever code the file holds)."""
    text = str(err)
    if "Unsupported global" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        return (f"is not a plain state dict: it pickles Python objects ({found.group(1) if found else 'not tensors'}), "
                f"which adbench does not unpickle")
    if isinstance(err, OSError) and not isinstance(err, EOFError):
        return f"cannot be read ({err.strerror or type(err).__name__})"
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False
    return "is empty" if empty else f"is corrupt or not a PyTorch weights file ({type(err).__name__})"


def read_weights_file(path: str | Path, option: str = "method.backbone.weights") -> dict[str, Any]:
    """The state dict in a local weights file, loaded as tensors only (``weights_only=True``); a wrapping
    ``{"state_dict" | "model" | "model_state_dict": ...}`` is unwrapped and ``module.`` prefixes dropped.
    WeightsError (one line naming the file and ``option``) when it is missing, unreadable, corrupt, not a dict,
    or pickles Python objects."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p} (from {option})")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        if isinstance(err, (MemoryError, KeyboardInterrupt)):
            raise
        fix = ("save only its tensors where the model is built, torch.save(model.state_dict(), 'weights.pth'), and "
               f"pass that file with {option}=..." if "Unsupported global" in str(err) else
               f"download or save it again, or pass another file with {option}=...")
        raise WeightsError(f"weights file {p} {_unreadable(p, err)}; {fix}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {p} does not hold a state dict (it holds a "
                           f"{type(state).__name__}); pass a file saved with torch.save(model.state_dict(), path) "
                           f"with {option}=...")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_state_dict_file(model: nn.Module, path: str | Path, ignore_prefixes: Sequence[str] = ("fc.", "classifier.", "head.")) -> None:
    """Load a local checkpoint into ``model``; keys of classification heads may be missing."""
    p = Path(path).expanduser()
    state = read_weights_file(p)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of the wrong shape, e.g. a resnet50 file for wide_resnet50_2
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip().startswith("size mismatch")]
        first = (lines[0] if lines else str(err).splitlines()[0]).rstrip(".")
        raise WeightsError(f"weights file {p} does not fit the backbone: {len(lines) or 'some'} tensors of the wrong "
                           f"shape, e.g. {first}; pass a file written for this backbone (method.backbone.weights)") from None
    missing = [k for k in missing if not k.startswith(tuple(ignore_prefixes))]
    if missing:
        raise WeightsError(f"weights file {p} does not fit the backbone: {len(missing)} missing keys, e.g. {missing[:3]}")


def build_backbone(name: str, weights: str | None = "imagenet") -> nn.Module:
    """A torchvision (``name``) or timm (``timm/<name>``) model with ``imagenet``, ``none`` or file weights."""
    weights = "none" if weights in (None, "none", "None", "") else str(weights)
    kind = weights if weights in ("imagenet", "none") else "file"
    model = _timm_model(name, kind) if _is_timm(name) else _torchvision_model(name, kind)
    if kind == "file":
        load_state_dict_file(model, weights)
    return model


def default_layers(name: str) -> list[str]:
    """Default feature layers for a backbone name (a stride-8 and a stride-16 stage)."""
    if name in DEFAULT_LAYERS:
        return list(DEFAULT_LAYERS[name])
    raise ConfigError(
        f"no default layers for backbone {name!r}; set method.backbone.layers=[...] to module names "
        f"(known defaults: {', '.join(DEFAULT_LAYERS)})"
    )


class _Stop(Exception):
    pass


class FeatureExtractor(nn.Module):
    """Runs a backbone up to the deepest requested layer and returns those layers' outputs in order."""

    def __init__(self, backbone: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.layers = list(layers)
        names = dict(backbone.named_modules())
        bad = [layer for layer in self.layers if layer not in names]
        if bad:
            sample = [n for n in names if n and n.count(".") <= 1][:12]
            raise ConfigError(f"backbone has no layer(s) {bad}; method.backbone.layers must name modules such as {sample}")
        self._out: dict[str, torch.Tensor] = {}
        self._active = False
        for layer in self.layers:
            names[layer].register_forward_hook(self._hook(layer))
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def _hook(self, layer: str):
        def fn(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            if not self._active:  # the backbone used directly, outside this extractor
                return
            self._out[layer] = out
            if len(self._out) == len(self.layers):
                raise _Stop  # nothing deeper is needed

        return fn

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._out = {}
        self._active = True
        try:
            self.backbone(x)
        except _Stop:
            pass
        finally:
            self._active = False
        out = [self._out[layer] for layer in self.layers]
        self._out = {}
        return out

    def train(self, mode: bool = True) -> "FeatureExtractor":
        super().train(False)  # batch-norm statistics stay frozen
        return self
