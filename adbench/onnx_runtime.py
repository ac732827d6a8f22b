"""Prediction with ONNX Runtime from a file written by :mod:`adbench.export` (no method code, no checkpoint).

Python::

    from adbench.onnx_runtime import load_onnx          # or adbench.predict.load(FILE, engine="onnxruntime")
    det = load_onnx("patchcore.onnx")
    r = det.predict("part_0042.png")
    r.score, r.anomalous, r.anomaly_map

The file's metadata gives the input transform (resize, crop, normalisation) and the calibrated threshold. Loading
checks the graph against the ``graph_sha256`` of the metadata and every metadata entry (:func:`check_metadata`):
a modified or foreign file is one error line, never a score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from .api import Prediction
from .calibration import Calibration
from .data.errors import ConfigError
from .predict import Detector
from .tiling import TiledMethod, Tiling


class OrtModel:
    """An ONNX Runtime session with the method interface ``predict(loader) -> Prediction``."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's InvalidGraph, Fail, ... (not OSError subclasses)
            raise ConfigError(f"{path} cannot be loaded by ONNX Runtime ({_first_line(err)}); {FIX}") from None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised images [B, 3, H, W] float32 -> (scores [B], maps [B, H, W])."""
        try:
            score, amap = self.session.run(["score", "anomaly_map"],
                                           {"image": np.ascontiguousarray(images, np.float32)})
        except Exception as err:  # noqa: BLE001 - onnxruntime's run errors
            raise ConfigError(f"{self.path} failed in ONNX Runtime on images of shape {list(images.shape)} "
                              f"({_first_line(err)}); {FIX}") from None
        return score, amap

    def predict(self, loader: DataLoader) -> Prediction:
        scores, maps = [], []
        for batch in loader:
            s, m = self.run(batch["image"].numpy())
            scores.append(s)
            maps.append(m)
        return Prediction(np.concatenate(scores).astype(np.float32), np.concatenate(maps).astype(np.float32))


FIX = "export it again with python -m adbench.export checkpoint=DIR output=FILE.onnx"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def check_path(path: str | Path) -> Path:
    """``checkpoint=`` of ``engine=onnxruntime``: an existing file, not a folder (ConfigError otherwise)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"checkpoint={path} is a folder; engine=onnxruntime needs FILE.onnx: export it first with "
                          f"python -m adbench.export checkpoint={path} format=onnx output=FILE.onnx")
    if not p.is_file():
        raise ConfigError(f"checkpoint={path} not found; with engine=onnxruntime pass checkpoint=FILE.onnx written by "
                          f"python -m adbench.export")
    return p


@dataclass
class OnnxInfo:
    """The metadata of an exported file, every entry checked (:func:`read_metadata`)."""

    method: str
    input_size: tuple[int, int]  # [H, W] of the graph's input and maps (a tile with tiling)
    image_size: int | None  # resize before the crop; None: each image at its own size (tiling only)
    crop_size: int | None
    tiling: Tiling | None
    calibration: Calibration | None
    raw: dict[str, str]  # every metadata entry as written


def _json(meta: dict[str, str], key: str, where: Path, default: str = "null") -> Any:
    try:
        return json.loads(meta.get(key, default))
    except ValueError:
        raise ConfigError(f"{where}: metadata {key}={_short(meta.get(key))} is not valid JSON; {FIX}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_metadata(meta: dict[str, str], graph_hw: tuple[int | None, int | None], where: Path) -> OnnxInfo:
    """Every metadata entry prediction uses, checked against each other and against the graph's input size
    ``graph_hw``: ConfigError (one line naming the file, the entry and the fix) on the first that cannot be used."""
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, output_size

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: metadata {key}={_short(meta.get(key))} {why}; {FIX}")

    method = meta.get("method", "")
    if not method.strip():
        raise bad("method", "is empty")
    size = _json(meta, "input_size", where)
    if not (isinstance(size, list) and len(size) == 2 and all(_side(v) for v in size)):
        raise bad("input_size", "is not [H, W] of two positive integers")
    if tuple(size) != tuple(graph_hw):
        raise bad("input_size", f"disagrees with the graph's input ({graph_hw[0]} x {graph_hw[1]})")
    image_size, crop_size = _json(meta, "image_size", where), _json(meta, "crop_size", where)
    if image_size is not None and not _side(image_size):
        raise bad("image_size", "is not a positive integer or null")
    if crop_size is not None and not _side(crop_size):
        raise bad("crop_size", "is not a positive integer or null")
    tiling_d = _json(meta, "tiling", where)
    tiling = None
    if tiling_d is not None:
        if not (isinstance(tiling_d, dict) and set(tiling_d) == {"size", "stride"} and _side(tiling_d["size"]) and
                _side(tiling_d["stride"]) and tiling_d["stride"] <= tiling_d["size"]):
            raise bad("tiling", "is not {\"size\": N, \"stride\": S} with 1 <= S <= N")
        tiling = Tiling(int(tiling_d["size"]), int(tiling_d["stride"]))
        if [tiling.size, tiling.size] != size:
            raise bad("tiling", f"has tiles of {tiling.size} px, the graph scores {size[0]} x {size[1]}")
    elif list(output_size(image_size, crop_size) or ()) != size:
        raise bad("image_size", f"with crop_size={crop_size} does not give the graph's input size {size}")
    norm = _json(meta, "normalisation", where, "{}")
    if not (isinstance(norm, dict) and norm.get("mean") == list(IMAGENET_MEAN) and norm.get("std") == list(IMAGENET_STD)):
        raise bad("normalisation", "is not the ImageNet mean and std this adbench normalises with")
    cal = _json(meta, "calibration", where)
    calibration = None if cal is None else Calibration.from_dict(cal, f"{where}: metadata calibration", FIX)
    threshold = _json(meta, "threshold", where)
    if threshold != (calibration.threshold if calibration is not None else None):
        raise bad("threshold", "disagrees with the threshold of metadata calibration")
    if _json(meta, "grayscale", where, "false") not in (True, False):
        raise bad("grayscale", "is not true or false")
    return OnnxInfo(method=method, input_size=(int(size[0]), int(size[1])), image_size=image_size,
                    crop_size=crop_size, tiling=tiling, calibration=calibration, raw=meta)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported file; a file that is not one raises ConfigError naming it."""
    return read_onnx(path).raw


def read_onnx(path: str | Path) -> OnnxInfo:
    """The checked metadata of an exported file: ConfigError (one line naming the file) when it is not an ONNX
    file written by :mod:`adbench.export`, when its graph does not match the ``graph_sha256`` of its metadata
    (modified weights, damaged bytes, or metadata copied onto another graph), or when an entry cannot be used."""
    import onnx

    from .export import graph_digest

    p = check_path(path)
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf DecodeError and friends
        raise ConfigError(f"{p} is not a readable ONNX file ({type(err).__name__}); {FIX}") from None
    meta = {e.key: e.value for e in proto.metadata_props}
    if "method" not in meta or "input_size" not in meta:
        raise ConfigError(f"{p} has no adbench metadata (method, input_size); export it with python -m adbench.export")
    if "graph_sha256" not in meta:
        raise ConfigError(f"{p} has no graph_sha256 in its metadata (written by an older adbench, or not by "
                          f"adbench.export): its graph cannot be verified; {FIX}")
    if graph_digest(proto) != meta["graph_sha256"]:
        raise ConfigError(f"{p} is modified or corrupt: its graph does not match the graph_sha256 of its metadata "
                          f"(changed weights, damaged bytes, or metadata copied from another file); {FIX}")
    inputs = [i for i in proto.graph.input if i.name == "image"]
    dims = list(inputs[0].type.tensor_type.shape.dim) if inputs else []
    if len(dims) != 4:
        raise ConfigError(f"{p}: the graph has no image input [B, 3, H, W]; {FIX}")
    hw = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[2:])
    return check_metadata(meta, hw, p)


class OnnxDetector(Detector):
    """:class:`~adbench.predict.Detector` whose model is an ONNX Runtime session of an exported file."""

    def __init__(self, path: str | Path, threshold: float | None = None, method: str | None = None,
                 batch_size: int | None = None, threads: int | None = None) -> None:
        info = read_onnx(path)
        if method is not None and method != info.method:
            raise ConfigError(f"{path} holds a {info.method!r} model, not {method!r}; pass a {method} file or "
                              f"drop method=")
        self.metadata = info.raw
        self.model = OrtModel(Path(path), threads)
        if info.tiling is not None:  # the graph scores tiles: cut, score, stitch as the torch model does
            self.model = TiledMethod(self.model, info.tiling, batch_size=int(batch_size or 8))
        self.checkpoint = Path(path)
        self.method_name = info.method
        self.image_size = info.image_size
        self.crop_size = info.crop_size
        self.manifest: dict[str, Any] = {"method": self.method_name, "out_size": list(info.input_size)}
        self.cfg = None
        self.calibration = info.calibration
        self.batch_size = int(batch_size or 8)
        self.threshold_override = threshold


def load_onnx(path: str | Path, threshold: float | None = None, method: str | None = None,
              batch_size: int | None = None, threads: int | None = None) -> OnnxDetector:
    """Load an exported ONNX file for prediction with ONNX Runtime (see :class:`OnnxDetector`)."""
    return OnnxDetector(path, threshold=threshold, method=method, batch_size=batch_size, threads=threads)
