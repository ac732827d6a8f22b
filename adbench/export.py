"""Export a saved model to ONNX: one graph from the normalised image to the image score and the anomaly map.

Command line::

    python -m adbench.export checkpoint=DIR format=onnx output=FILE.onnx [opset=17]

The graph takes ``image``: float32 [B, 3, H, W], the input transformed as in training (resize, centre crop,
ImageNet normalisation; see the metadata) and returns ``score`` [B] and ``anomaly_map`` [B, H, W]. The file's
``metadata_props`` carry what prediction needs: method, input size, resize/crop, normalisation, the calibrated
threshold and the adbench version. Score it with ``python -m adbench.predict checkpoint=FILE.onnx
engine=onnxruntime ...`` or :mod:`adbench.onnx_runtime`.

A method is exportable when its package registers an exporter (:func:`register_exporter`): a function from
the loaded method to a pure ``nn.Module`` image -> (score, map), with optional attributes ``export_note`` (a
line for the metadata) and ``export_calibrated`` (False: the graph's scores are not the ones the checkpoint's
threshold was calibrated on, so no threshold is written). Others say why they are not.
"""

from __future__ import annotations

import json
import os
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

_EXPORTERS: dict[str, Callable[[Any], nn.Module]] = {}
FORMATS = ("onnx",)
OPTIONS = {"checkpoint": "DIR, a checkpoint folder written with save_model=true",
           "format": "onnx (the only format)",
           "output": "FILE.onnx, the file to write",
           "opset": "ONNX opset version (default 17)"}


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


def trace_onnx(module: nn.Module, size: tuple[int, int], path: str | Path, opset: int = 17) -> Path:
    """Trace ``module`` (image [B, 3, H, W] -> score, anomaly_map) into an ONNX file without metadata, batch free."""
    example = torch.zeros(2, 3, int(size[0]), int(size[1]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes fixed at export time (they are fixed)
        torch.onnx.export(module, (example,), str(path), input_names=["image"],
                          output_names=["score", "anomaly_map"], opset_version=opset, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "anomaly_map": {0: "batch"}})
    return Path(path)


def export_onnx(checkpoint: str | Path, output: str | Path, opset: int = 17) -> Path:
    """Write the ONNX graph of a checkpoint folder to ``output`` (replaced atomically); returns ``output``."""
    import onnx

    model, manifest, _cfg, calibration = load_checkpoint(checkpoint, "cpu")
    name = str(manifest["method"])
    module = export_module(model.method if isinstance(model, TiledMethod) else model, name)  # tiled: the tile model
    h, w = (int(v) for v in manifest["out_size"])
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        trace_onnx(module, (h, w), tmp, opset)
        proto = onnx.load(str(tmp))
        for key, value in metadata(manifest, calibration, str(getattr(module, "export_note", "")),
                                      bool(getattr(module, "export_calibrated", True))).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


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
        try:
            opset = int(opts.get("opset", "17"))
        except ValueError:
            raise ConfigError(f"opset={opts['opset']} is not an integer; pass e.g. opset=17") from None
        path = export_onnx(opts["checkpoint"], opts["output"], opset)
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
