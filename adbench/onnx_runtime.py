"""Prediction with ONNX Runtime from a file written by :mod:`adbench.export` (no method code, no checkpoint).

Python::

    from adbench.onnx_runtime import load_onnx          # or adbench.predict.load(FILE, engine="onnxruntime")
    det = load_onnx("patchcore.onnx")
    r = det.predict("part_0042.png")
    r.score, r.anomalous, r.anomaly_map

The file's metadata gives the input transform (resize, crop, normalisation) and the calibrated threshold.
"""

from __future__ import annotations

import json
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
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised images [B, 3, H, W] float32 -> (scores [B], maps [B, H, W])."""
        score, amap = self.session.run(["score", "anomaly_map"], {"image": np.ascontiguousarray(images, np.float32)})
        return score, amap

    def predict(self, loader: DataLoader) -> Prediction:
        scores, maps = [], []
        for batch in loader:
            s, m = self.run(batch["image"].numpy())
            scores.append(s)
            maps.append(m)
        return Prediction(np.concatenate(scores).astype(np.float32), np.concatenate(maps).astype(np.float32))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported file; a file that is not one raises ConfigError naming it."""
    import onnx

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"checkpoint={path} is a folder; engine=onnxruntime needs FILE.onnx: export it first with "
                          f"python -m adbench.export checkpoint={path} format=onnx output=FILE.onnx")
    if not p.is_file():
        raise ConfigError(f"checkpoint={path} not found; with engine=onnxruntime pass checkpoint=FILE.onnx written by "
                          f"python -m adbench.export")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as err:  # protobuf DecodeError and friends
        raise ConfigError(f"{p} is not a readable ONNX file ({type(err).__name__}); export it again with "
                          f"python -m adbench.export") from None
    meta = {e.key: e.value for e in proto.metadata_props}
    if "method" not in meta or "input_size" not in meta:
        raise ConfigError(f"{p} has no adbench metadata (method, input_size); export it with python -m adbench.export")
    return meta


class OnnxDetector(Detector):
    """:class:`~adbench.predict.Detector` whose model is an ONNX Runtime session of an exported file."""

    def __init__(self, path: str | Path, threshold: float | None = None, method: str | None = None,
                 batch_size: int | None = None, threads: int | None = None) -> None:
        meta = read_metadata(path)
        if method is not None and method != meta["method"]:
            raise ConfigError(f"{path} holds a {meta['method']!r} model, not {method!r}; pass a {method} file or "
                              f"drop method=")
        self.metadata = meta
        self.model = OrtModel(Path(path), threads)
        tiling = Tiling.from_dict(json.loads(meta.get("tiling", "null")))
        if tiling is not None:  # the graph scores tiles: cut, score, stitch as the torch model does
            self.model = TiledMethod(self.model, tiling, batch_size=int(batch_size or 8))
        self.checkpoint = Path(path)
        self.method_name = meta["method"]
        size = json.loads(meta["image_size"])
        self.image_size = int(size) if size is not None else None
        self.crop_size = json.loads(meta.get("crop_size", "null"))
        self.manifest: dict[str, Any] = {"method": self.method_name, "out_size": json.loads(meta["input_size"])}
        self.cfg = None
        cal = json.loads(meta.get("calibration", "null"))
        self.calibration = Calibration.from_dict(cal) if cal else None
        self.batch_size = int(batch_size or 8)
        self.threshold_override = threshold


def load_onnx(path: str | Path, threshold: float | None = None, method: str | None = None,
              batch_size: int | None = None, threads: int | None = None) -> OnnxDetector:
    """Load an exported ONNX file for prediction with ONNX Runtime (see :class:`OnnxDetector`)."""
    return OnnxDetector(path, threshold=threshold, method=method, batch_size=batch_size, threads=threads)
