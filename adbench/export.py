"""Export a saved model to ONNX: one graph from the normalised image to the image score and the anomaly map.

Command line::

    python -m adbench.export checkpoint=DIR format=onnx output=FILE.onnx [opset=17] [overwrite=false]

The graph takes ``image``: float32 [B, 3, H, W], the input transformed as in training (resize, centre crop,
ImageNet normalisation; see the metadata) and returns ``score`` [B] and ``anomaly_map`` [B, H, W]. The file's
``metadata_props`` carry what prediction needs: method, input size, resize/crop, normalisation, the calibrated
threshold, the adbench version, and ``graph_sha256``, the digest of the graph that loading checks (a modified
file, or metadata copied onto another graph, is refused). An existing ``output=`` is replaced only when it is an
ONNX model written by this exporter (or with ``overwrite=true``); a file inside a checkpoint folder never. Score it with ``python -m adbench.predict checkpoint=FILE.onnx
engine=onnxruntime ...`` or :mod:`adbench.onnx_runtime`.

A method is exportable when its package registers an exporter (:func:`register_exporter`): a function from
the loaded method to a pure ``nn.Module`` image -> (score, map), with optional attributes ``export_note`` (a
line for the metadata) and ``export_calibrated`` (False: the graph's scores are not the ones the checkpoint's
threshold was calibrated on, so no threshold is written). Others say why they are not.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint
from .data.errors import ConfigError
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .registry import list_methods
from .tiling import TiledMethod
from .utils import disk_full

_EXPORTERS: dict[str, Callable[[Any], nn.Module]] = {}
FORMATS = ("onnx",)
OPTIONS = {"checkpoint": "DIR, a checkpoint folder written with save_model=true",
           "format": "onnx (the only format)",
           "output": "FILE.onnx, the file to write",
           "opset": "ONNX opset version (default 17)",
           "overwrite": "true | false (default false): replace an existing output= that is not an ONNX model "
                        "written by adbench.export"}
DEFAULT_OPSET = 17


class NotExportable(ConfigError):
    """A method (or one of its settings) that has no ONNX graph; the message says why."""


def reflect_index(n: int, r: int) -> torch.Tensor:
    """Indices of ``n`` samples padded by ``r`` on each side the way scipy.ndimage's ``reflect`` mode does
    (edge sample repeated: d c b a | a b c d | d c b a)."""
    idx = []
    for i in range(-r, n + r):
        j = i % (2 * n)
        idx.append(2 * n - 1 - j if j >= n else j)
    return torch.tensor(idx, dtype=torch.long)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian weights (radius ``int(truncate * sigma + 0.5)``), normalised."""
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


class GaussianBlur(nn.Module):
    """scipy.ndimage.gaussian_filter of maps [B, 1, H, W] of a fixed size, as two 1-D convolutions."""

    def __init__(self, sigma: float, size: tuple[int, int]) -> None:
        super().__init__()
        k = gaussian_kernel(sigma)
        r = (len(k) - 1) // 2
        self.register_buffer("k_row", k.reshape(1, 1, 1, -1))
        self.register_buffer("k_col", k.reshape(1, 1, -1, 1))
        self.register_buffer("idx_h", reflect_index(size[0], r))
        self.register_buffer("idx_w", reflect_index(size[1], r))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        m = F.conv2d(m.index_select(3, self.idx_w), self.k_row)  # [B, 1, H, W]
        return F.conv2d(m.index_select(2, self.idx_h), self.k_col)


def resize_matrix(n_in: int, n_out: int, antialias: bool = False) -> torch.Tensor:
    """``A`` [n_out, n_in] with ``A @ x`` equal to F.interpolate(bilinear, align_corners=False, ``antialias``) of
    ``x`` along one axis (the interpolation is separable and linear)."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)  # along the width (a height of 1
    out = F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False, antialias=antialias)  # is wrong)
    return out.reshape(n_in, n_out).t().float().contiguous()


def image_scores(maps: torch.Tensor, how: str = "max", topk: int = 1) -> torch.Tensor:
    """Maps [B, H, W] -> [B]: the maximum, or the mean of the ``topk`` highest pixels."""
    flat = maps.reshape(maps.shape[0], -1)
    if how == "max":
        return flat.max(1).values
    return torch.topk(flat, min(topk, flat.shape[1]), dim=1).values.mean(1)


def register_exporter(name: str) -> Callable[[Callable[[Any], nn.Module]], Callable[[Any], nn.Module]]:
    """Decorator: ``fn(method) -> nn.Module`` builds the export graph of a loaded method ``name``."""

    def deco(fn: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        _EXPORTERS[name] = fn
        return fn

    return deco


def export_module(method: Any, name: str) -> nn.Module:
    """The pure module image [B, 3, H, W] -> (score [B], map [B, H, W]) of a loaded method, in eval mode, on CPU."""
    list_methods()  # imports the method packages, which register their exporters
    if name not in _EXPORTERS:
        raise NotExportable(f"method {name!r} is not exportable because it registers no ONNX exporter "
                            f"(methods with an exporter: {', '.join(sorted(_EXPORTERS)) or 'none'})")
    return _EXPORTERS[name](method).cpu().eval()


def adbench_version() -> str:
    try:
        from importlib.metadata import version

        return version("adbench")
    except Exception:  # not installed as a package (a source checkout on PYTHONPATH)
        return "0.1.0"


def metadata(manifest: dict[str, Any], calibration: Any, note: str, calibrated: bool = True) -> dict[str, str]:
    """The ``metadata_props`` of an exported file (all values are strings; lists and dicts as JSON)."""
    out_size = [int(v) for v in manifest["out_size"]]
    if calibration is not None and not calibrated:
        calibration = None
    meta = {
        "adbench_version": adbench_version(),
        "method": str(manifest["method"]),
        "category": str(manifest.get("category", "")),
        "input_size": json.dumps(out_size),  # [H, W] of the graph's input and map
        "image_size": json.dumps(manifest.get("image_size", out_size[0])),  # the resize before the crop; null: none
        "tiling": json.dumps(manifest.get("tiling")),  # {"size", "stride"}: the graph scores tiles, stitch them
        "crop_size": json.dumps(manifest.get("crop_size")),
        "normalisation": json.dumps({"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                                     "scale": "RGB in [0, 1], then (x - mean) / std"}),
        "input": "image: float32 [B, 3, H, W], normalised",
        "outputs": "score: float32 [B]; anomaly_map: float32 [B, H, W]",
        "threshold": json.dumps(calibration.threshold if calibration is not None else None),
        "calibration": json.dumps(calibration.to_dict() if calibration is not None else None),
        "grayscale": json.dumps(bool(manifest.get("grayscale"))),
    }
    if note:
        meta["note"] = note
    return meta


@contextlib.contextmanager
def _c_stdout_silenced():
    """File descriptor 1 sent to /dev/null: torch's exporter prints the whole TorchScript graph there (C++) when a
    translation fails, hundreds of lines before the one-line error."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1: nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def trace_onnx(module: nn.Module, size: tuple[int, int], path: str | Path, opset: int = 17) -> Path:
    """Trace ``module`` (image [B, 3, H, W] -> score, anomaly_map) into an ONNX file without metadata, batch free."""
    example = torch.zeros(2, 3, int(size[0]), int(size[1]))
    with torch.no_grad(), warnings.catch_warnings(), _c_stdout_silenced():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes fixed at export time (they are fixed)
        torch.onnx.export(module, (example,), str(path), input_names=["image"],
                          output_names=["score", "anomaly_map"], opset_version=opset, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "anomaly_map": {0: "batch"}})
    return Path(path)


def graph_digest(proto: Any) -> str:
    """SHA-256 of an ONNX model's graph (nodes, weights, inputs and outputs) and opset imports: what the file
    computes, without its metadata. Stored as ``graph_sha256`` and checked when the file is loaded."""
    import hashlib

    h = hashlib.sha256(proto.graph.SerializeToString(deterministic=True))
    for op in proto.opset_import:
        h.update(op.SerializeToString(deterministic=True))
    return h.hexdigest()


def opset_range() -> tuple[int, int]:
    """The ONNX opsets torch's exporter can write: (lowest, highest)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MIN_OPSET), int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        return 7, 17


def parse_opset(text: str) -> int:
    """``opset=`` as an integer the exporter supports; ConfigError (one line) otherwise."""
    lo, hi = opset_range()
    try:
        opset = int(text)
    except ValueError:
        opset = None
    if opset is None or not lo <= opset <= hi:
        raise ConfigError(f"opset={text} is not an ONNX opset torch can export (it writes {lo} to {hi}); pass opset=N "
                          f"with {lo} <= N <= {hi}, or leave it out (default {DEFAULT_OPSET})")
    return opset


def is_adbench_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX file written by this exporter (its metadata names adbench and a method)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not protobuf, not ONNX, unreadable
        return False
    keys = {e.key for e in proto.metadata_props}
    return {"adbench_version", "method"} <= keys


def check_output(out: Path, checkpoint: str | Path, overwrite: bool = False) -> None:
    """Refuse an ``output=`` that would destroy something: a folder, a file inside a checkpoint folder (any
    folder holding ``adbench_checkpoint.json``, or the exported checkpoint itself), or an existing file that is not
    an ONNX model written by adbench (unless ``overwrite``)."""
    from .checkpoint import MANIFEST

    if out.is_dir():
        raise ConfigError(f"output={out} is a folder; pass output=FILE.onnx, a file path (e.g. {out / 'model.onnx'})")
    ckpt = Path(checkpoint).resolve()
    parent = out.parent.resolve()
    for folder in (parent, *parent.parents):
        if folder == ckpt or (folder / MANIFEST).is_file():
            raise ConfigError(f"output={out} is inside the checkpoint folder {folder}: adbench never writes there (it "
                              f"would change the checkpoint); pass output= outside it, e.g. output="
                              f"{folder.parent / (folder.name + '.onnx')}")
    if (out.exists() or out.is_symlink()) and not overwrite and not is_adbench_onnx(out):
        raise ConfigError(f"output={out} exists and is not an ONNX model written by python -m adbench.export; pass "
                          f"another output=FILE.onnx, or overwrite=true to replace it")


def _remove_stale_temps(folder: Path, stem: str) -> None:
    """Remove the temporary files of earlier exports to ``stem`` that no running process can be writing: those
    of a process of this machine that is gone (:func:`adbench.utils.temp_is_stale`); an older adbench's
    ``<stem>.<pid>.tmp`` (no host in the name) only once untouched for a week."""
    import glob
    import time

    from .utils import STALE_AFTER_S, remove_stale_temps

    remove_stale_temps(folder, stem)
    for path in folder.glob(glob.escape(stem) + ".*.tmp"):
        try:
            if path.name[len(stem) + 1 : -len(".tmp")].isdigit() and path.is_file() and \
                    path.stat().st_mtime < time.time() - STALE_AFTER_S:
                path.unlink()
        except OSError:
            pass


def export_onnx(checkpoint: str | Path, output: str | Path, opset: int = 17, overwrite: bool = False) -> Path:
    """Write the ONNX graph of a checkpoint folder to ``output`` (replaced atomically); returns ``output``.

    Refused (ConfigError, one line, nothing written) when ``output`` is a folder, lies in a checkpoint folder, or
    exists and is not an adbench ONNX model (unless ``overwrite``). A failed write (read-only file system, full
    disk) is one line and leaves no file: the temporary file, named after this host and process, is removed, and
    those of killed exports are removed by the next export to the same file.
    """
    import onnx

    from .utils import temp_name

    out = Path(output)
    check_output(out, checkpoint, overwrite)
    model, manifest, _cfg, calibration = load_checkpoint(checkpoint, "cpu")
    name = str(manifest["method"])
    module = export_module(model.method if isinstance(model, TiledMethod) else model, name)  # tiled: the tile model
    h, w = (int(v) for v in manifest["out_size"])
    stem = f".{out.name}"
    tmp = out.parent / f"{temp_name(stem)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(out.parent, stem)
        try:
            trace_onnx(module, (h, w), tmp, opset)
        except (OSError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - the exporter's own errors: an op missing at this opset, ...
            if disk_full(out.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out)) from err
            raise ConfigError(export_error(name, opset, err)) from None
        proto = onnx.load(str(tmp))
        props = metadata(manifest, calibration, str(getattr(module, "export_note", "")),
                         bool(getattr(module, "export_calibrated", True)))
        props["graph_sha256"] = graph_digest(proto)
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        try:
            onnx.save(proto, str(tmp))
        except (OSError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - protobuf's writer on a full disk
            if disk_full(out.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out)) from err
            raise
        os.replace(tmp, out)
    except OSError as err:
        raise write_error(out, err) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. a read-only file system: nothing was written, and the first error is the one to show
            pass
    return out


def write_error(out: Path, err: OSError) -> ConfigError:
    """One line for a failed write of ``output=`` (read-only file system, full disk, permissions...)."""
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    what = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}.get(
        err.errno, err.strerror or type(err).__name__)
    fix = "free space or pass output= on another disk" if full else "pass output=FILE.onnx in a writable folder"
    return ConfigError(f"cannot write output={out} ({what}); nothing was left there (a file it would have replaced "
                       f"is unchanged); {fix}")


def export_error(name: str, opset: int, err: BaseException) -> str:
    """One line for an exporter failure: torch's first line and the operator it was translating."""
    text = str(err).strip()
    first = text.splitlines()[0][:160] if text else type(err).__name__
    op = re.search(r"Occurred when translating (\w+)", text)
    where = f" translating {op.group(1)}" if op else ""
    fix = f"pass a higher opset, e.g. opset={DEFAULT_OPSET} (the default)" if opset < DEFAULT_OPSET else \
        "this model cannot be exported with this torch; see the method's notes in README.md (Export to ONNX)"
    return f"the {name} model cannot be exported at opset={opset} ({type(err).__name__}{where}: {first}); {fix}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.split("A method is")[0].strip())
        print("\nOptions:\n" + "\n".join(f"  {k}=...  {v}" for k, v in OPTIONS.items()))
        return 0
    try:
        opts: dict[str, str] = {}
        for a in argv:
            key, sep, value = a.partition("=")
            if not sep or key not in OPTIONS:
                raise ConfigError(f"unknown argument {a!r}; usage: python -m adbench.export checkpoint=DIR "
                                  f"format=onnx output=FILE.onnx")
            opts[key] = value
        for key in ("checkpoint", "output"):
            if key not in opts:
                raise ConfigError(f"missing option {key}=...: {OPTIONS[key]}")
        fmt = opts.get("format", "onnx").lower()
        if fmt not in FORMATS:
            raise ConfigError(f"format={opts['format']} is not supported; pass format=onnx")
        opset = parse_opset(opts.get("opset", str(DEFAULT_OPSET)))
        overwrite = opts.get("overwrite", "false").lower()
        if overwrite not in ("true", "false"):
            raise ConfigError(f"overwrite={opts['overwrite']} must be true or false")
        path = export_onnx(opts["checkpoint"], opts["output"], opset, overwrite == "true")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    # ``python -m adbench.export`` runs this file as ``__main__``, a second copy of the module: the method packages
    # register their exporters in ``adbench.export``, so its ``main`` is the one to run (else: "no exporter")
    from adbench.export import main as _main

    raise SystemExit(_main())
