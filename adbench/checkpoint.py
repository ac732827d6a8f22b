"""Self-contained checkpoint folders: the method's files, the resolved config, the calibration, a manifest.

Layout of ``<dir>``: the method's own files (``method.save``), ``config.yaml`` (resolved run config),
``calibration.json`` (when calibrated) and ``adbench_checkpoint.json`` (format, method, input geometry,
library versions). Any registered method loads through the registry: the method name is in the manifest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
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
from .tiling import TiledMethod, Tiling
from .utils import disk_full, write_dir_atomic

MANIFEST = "adbench_checkpoint.json"
CONFIG = "config.yaml"
FORMAT = 1

CALIBRATION = "calibration.json"
_OWN = (MANIFEST, CONFIG, CALIBRATION)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_list(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``directory`` but the manifest and
    ``calibration.json`` (which a user may edit or delete; it is checked by :meth:`Calibration.load`)."""
    out = {}
    for f in sorted(directory.rglob("*")):
        if f.is_file() and f.name not in (MANIFEST, CALIBRATION):
            out[f.relative_to(directory).as_posix()] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    return out


def write_checkpoint(directory: str | Path, method: Any, cfg: DictConfig, ctx: RunContext,
                     calibration: Calibration | None) -> Path:
    """Save ``method`` and everything needed to use it without the training data into ``directory``.

    Everything is written into a temporary folder beside ``directory`` that replaces it only when complete, with
    a manifest listing the size and SHA-256 of every file (what :func:`verify_checkpoint` checks). Files a
    method left in ``directory`` during ``fit`` (training states) are carried over; an old checkpoint's own
    files are not. Raises OSError when a write fails (``directory`` is then untouched).
    """
    out = Path(directory)
    tiling = Tiling.from_cfg(cfg.dataset.get("tiling"))
    old_files = set()
    try:
        old_files = set((json.loads((out / MANIFEST).read_text()) or {}).get("files") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        pass

    def fill(tmp: Path) -> None:
        try:
            method.save(tmp)
        except OSError:
            raise
        except Exception as err:  # a C++ writer (torch, faiss) on a full disk reports no errno
            if disk_full(tmp):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from err
            raise
        OmegaConf.save(cfg, tmp / CONFIG, resolve=True)
        if calibration is not None:
            calibration.save(tmp)
        manifest = {
            "format": FORMAT,
            "method": str(cfg.method.name),
            "dataset": str(cfg.dataset.name),
            "category": str(cfg.category),
            "seed": int(cfg.seed),
            "image_size": int(cfg.dataset.image_size) if cfg.dataset.image_size is not None else None,
            "crop_size": int(cfg.dataset.crop_size) if cfg.dataset.crop_size else None,
            "out_size": list(ctx.image_size),  # what the method sees (a tile with tiling)
            "tiling": tiling.to_dict() if tiling else None,
            "is_texture": bool(ctx.is_texture),
            "grayscale": bool(ctx.grayscale),
            "calibrated": calibration is not None,
            "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": _file_list(tmp),  # size and SHA-256 of every file: what resume and load verify
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))

    write_dir_atomic(out, fill, keep=lambda name: name not in _OWN and name not in old_files)
    return out


def verify_checkpoint(directory: str | Path) -> str | None:
    """Why the checkpoint in ``directory`` cannot be trusted (one line naming the file), or None when its
    manifest is readable, every file it lists is there with the listed size and SHA-256, and its
    ``calibration.json`` (if any) is readable with finite numbers."""
    d = Path(directory)
    try:
        manifest = read_manifest(d)
    except ConfigError as err:
        return str(err)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{d / MANIFEST} lists no files (written by an older adbench): its files cannot be verified"
    for name, meta in files.items():
        f = d / name
        try:
            size, sha = int(meta["size"]), str(meta["sha256"])
        except (TypeError, KeyError, ValueError):
            return f"{d / MANIFEST} is corrupt (bad entry for {name})"
        if not f.is_file():
            return f"{f} is missing (listed in {MANIFEST})"
        if f.stat().st_size != size:
            return f"{f} is truncated or modified ({f.stat().st_size} bytes, {MANIFEST} says {size})"
        if _sha256(f) != sha:
            return f"{f} is corrupt or modified (its SHA-256 differs from {MANIFEST})"
    try:
        Calibration.load(d)
    except ConfigError as err:
        return str(err)
    return None


_REQUIRED = {"format": int, "method": str, "out_size": list}


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
        except (ValueError, OSError) as err:
            raise ConfigError(f"{path} is unreadable or corrupt ({type(err).__name__}); retrain with "
                              f"save_model=true") from None
        if not isinstance(manifest, dict):
            raise ConfigError(f"{path} is corrupt (a JSON {type(manifest).__name__}, not an object); retrain with "
                              f"save_model=true")
        bad = [k for k, t in _REQUIRED.items() if not isinstance(manifest.get(k), t)]
        if "format" not in bad and manifest["format"] == FORMAT and bad:
            raise ConfigError(f"{path} is corrupt (missing or wrong {', '.join(bad)}); retrain with save_model=true")
    elif (d / CONFIG).is_file():
        cfg = load_config(d / CONFIG)
        try:
            manifest = {"format": FORMAT, "method": str(cfg.method.name), "dataset": str(cfg.dataset.name),
                        "category": str(cfg.category), "seed": int(cfg.seed),
                        "image_size": int(cfg.dataset.image_size) if cfg.dataset.image_size is not None else None,
                        "crop_size": int(cfg.dataset.crop_size) if cfg.dataset.crop_size else None,
                        "is_texture": False, "grayscale": False}
        except Exception as err:  # noqa: BLE001 - any missing or malformed key
            raise ConfigError(f"{d / CONFIG} is not an adbench run config ({type(err).__name__}); retrain with "
                              f"save_model=true") from None
        try:
            tiling = Tiling.from_cfg(cfg.dataset.get("tiling"))
        except ConfigError as err:
            raise ConfigError(f"{d / CONFIG}: {err}; retrain with save_model=true") from None
        out = (tiling.size, tiling.size) if tiling else output_size(manifest["image_size"], manifest["crop_size"])
        if out is None:
            raise ConfigError(f"{d / CONFIG} has dataset.image_size=null and no {MANIFEST}; retrain with "
                              f"save_model=true")
        manifest["out_size"] = list(out)  # what the method sees: the tile when the config tiles
        manifest["tiling"] = tiling.to_dict() if tiling else None
    else:
        raise ConfigError(f"checkpoint={directory} is not an adbench checkpoint (no {MANIFEST} or {CONFIG} in it); "
                          f"pass the folder a run with save_model=true wrote")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise ConfigError(f"checkpoint {d} has format {fmt}, this adbench reads format {FORMAT}; retrain with this "
                          f"version (save_model=true) or use the adbench version that wrote it")
    return manifest


def load_config(path: Path) -> DictConfig:
    """A checkpoint's ``config.yaml``; ConfigError naming it when it is not a readable YAML mapping."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # noqa: BLE001 - yaml / omegaconf / decoding errors
        raise ConfigError(f"{path} is unreadable or corrupt ({type(err).__name__}); retrain with "
                          f"save_model=true") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} is corrupt (not a YAML mapping); retrain with save_model=true")
    return cfg


def load_checkpoint(directory: str | Path, device: Any = "cpu", method: str | None = None,
                    progress: bool = False) -> tuple[Any, dict[str, Any], DictConfig, Calibration | None]:
    """(fitted method, manifest, resolved run config, calibration or None) from a checkpoint folder.

    The files are checked against the manifest's sizes and SHA-256 first. ``method``: the method the caller
    expects; a checkpoint of another method raises ConfigError.
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
    if isinstance(manifest.get("files"), dict):  # older checkpoints have no file list
        problem = verify_checkpoint(d)
        if problem:
            raise ConfigError(f"{problem}; retrain with save_model=true")
    cfg = load_config(d / CONFIG) if (d / CONFIG).is_file() else OmegaConf.create({})
    ctx = RunContext(device=torch.device(device), seed=int(manifest.get("seed", 0)),
                     category=str(manifest.get("category", "")), is_texture=bool(manifest.get("is_texture")),
                     grayscale=bool(manifest.get("grayscale")), image_size=tuple(manifest["out_size"]),
                     work_dir=None, progress=progress)
    try:
        model = get_method(name).load(d, ctx)
    except FileNotFoundError as err:
        raise ConfigError(f"checkpoint {d} is incomplete ({err}); retrain with save_model=true") from None
    except ConfigError as err:
        raise ConfigError(str(err) if "retrain" in str(err) else f"{err}; retrain with this adbench "
                          f"(save_model=true)") from None
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as err:  # e.g. a corrupt faiss index
        if isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise ConfigError(f"checkpoint {d} could not be loaded ({type(err).__name__}: {first}); retrain with "
                          f"save_model=true") from None
    try:
        tiling = Tiling.from_dict(manifest.get("tiling"))
    except (TypeError, KeyError, ValueError):
        raise ConfigError(f"{d / MANIFEST} is corrupt (bad tiling entry); retrain with save_model=true") from None
    if tiling is not None:  # fitted on tiles: scored on tiles, maps stitched at each image's size
        model = TiledMethod(model, tiling, batch_size=int((cfg.get("dataset") or {}).get("batch_size", 8) or 8))
    return model, manifest, cfg, Calibration.load(d)
