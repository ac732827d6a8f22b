"""Self-contained checkpoint folders: the method's files, the resolved config, the calibration, a manifest.

Layout of ``<dir>``: the method's own files (``method.save``), ``config.yaml`` (resolved run config),
``calibration.json`` (when calibrated) and ``adbench_checkpoint.json`` (format, method, input geometry,
library versions). Any registered method loads through the registry: the method name is in the manifest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .api import RunContext
from .calibration import Calibration
from .data.errors import ConfigError
from .data.transforms import output_size
from .registry import get_method, list_methods
from .results import package_versions

MANIFEST = "adbench_checkpoint.json"
CONFIG = "config.yaml"
FORMAT = 1


def write_checkpoint(directory: str | Path, method: Any, cfg: DictConfig, ctx: RunContext,
                     calibration: Calibration | None) -> Path:
    """Save ``method`` and everything needed to use it without the training data into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    method.save(out)
    OmegaConf.save(cfg, out / CONFIG, resolve=True)
    (out / "calibration.json").unlink(missing_ok=True)
    if calibration is not None:
        calibration.save(out)
    manifest = {
        "format": FORMAT,
        "method": str(cfg.method.name),
        "dataset": str(cfg.dataset.name),
        "category": str(cfg.category),
        "seed": int(cfg.seed),
        "image_size": int(cfg.dataset.image_size),
        "crop_size": int(cfg.dataset.crop_size) if cfg.dataset.crop_size else None,
        "out_size": list(ctx.image_size),
        "is_texture": bool(ctx.is_texture),
        "grayscale": bool(ctx.grayscale),
        "calibrated": calibration is not None,
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint folder (rebuilt from ``config.yaml`` for folders that predate it)."""
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"checkpoint={directory} not found; pass checkpoint=DIR, a folder written by a run with "
                          f"save_model=true (its path is printed as 'checkpoint:' at the end of the run)")
    path = d / MANIFEST
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is corrupt ({err}); retrain with save_model=true") from None
    elif (d / CONFIG).is_file():
        cfg = OmegaConf.load(d / CONFIG)
        manifest = {"format": FORMAT, "method": str(cfg.method.name), "dataset": str(cfg.dataset.name),
                    "category": str(cfg.category), "seed": int(cfg.seed), "image_size": int(cfg.dataset.image_size),
                    "crop_size": int(cfg.dataset.crop_size) if cfg.dataset.crop_size else None,
                    "is_texture": False, "grayscale": False}
        manifest["out_size"] = list(output_size(manifest["image_size"], manifest["crop_size"]))
    else:
        raise ConfigError(f"checkpoint={directory} is not an adbench checkpoint (no {MANIFEST} or {CONFIG} in it); "
                          f"pass the folder a run with save_model=true wrote")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise ConfigError(f"checkpoint {d} has format {fmt}, this adbench reads format {FORMAT}; retrain with this "
                          f"version (save_model=true) or use the adbench version that wrote it")
    return manifest


def load_checkpoint(directory: str | Path, device: Any = "cpu", method: str | None = None,
                    progress: bool = False) -> tuple[Any, dict[str, Any], DictConfig, Calibration | None]:
    """(fitted method, manifest, resolved run config, calibration or None) from a checkpoint folder.

    ``method``: the method the caller expects; a checkpoint of another method raises ConfigError.
    """
    import torch

    d = Path(directory)
    manifest = read_manifest(d)
    name = str(manifest["method"])
    if method is not None and method != name:
        raise ConfigError(f"checkpoint {d} holds a {name!r} model, not {method!r}; pass a {method} checkpoint "
                          f"or drop method=")
    if name not in list_methods():
        raise ConfigError(f"checkpoint {d} was written by method {name!r}, which this adbench does not have "
                          f"(registered: {', '.join(list_methods())}); install the version that has it")
    cfg = OmegaConf.load(d / CONFIG) if (d / CONFIG).is_file() else OmegaConf.create({})
    ctx = RunContext(device=torch.device(device), seed=int(manifest.get("seed", 0)),
                     category=str(manifest.get("category", "")), is_texture=bool(manifest.get("is_texture")),
                     grayscale=bool(manifest.get("grayscale")), image_size=tuple(manifest["out_size"]),
                     work_dir=None, progress=progress)
    try:
        model = get_method(name).load(d, ctx)
    except FileNotFoundError as err:
        raise ConfigError(f"checkpoint {d} is incomplete ({err}); retrain with save_model=true") from None
    except ConfigError as err:
        raise ConfigError(f"{err}; retrain with this adbench (save_model=true)") from None
    return model, manifest, cfg, Calibration.load(d)
