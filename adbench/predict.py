"""Score new images with a saved model.

Command line::

    python -m adbench.predict checkpoint=DIR input=IMAGE_OR_FOLDER output=DIR [threshold=X] [device=auto]
    python -m adbench.predict checkpoint=FILE.onnx engine=onnxruntime input=IMAGE_OR_FOLDER output=DIR

writes, per image ``<name>`` (its file name with the extension, so ``a.png`` and ``a.jpg`` never share an
output), ``<name>.npy`` (the anomaly map, float32 [H, W] at the model's input size), ``<name>_overlay.png`` (the
map over the resized input on the checkpoint's fixed scale, a colour bar with the scale below it), and a row of
``predictions.csv`` / ``predictions.json`` with its score and the normal/anomalous decision (``score >
threshold``; the threshold was calibrated at fit time, see :mod:`adbench.calibration`). Everything is written in
a staging folder and renamed into ``output=`` only when complete: a failure leaves ``output=`` as it was.

Python::

    from adbench.predict import load
    det = load("results/checkpoints/patchcore/folder/custom/seed0-...")
    r = det.predict("part_0042.png")        # or a PIL image, a [3, H, W] / [B, 3, H, W] tensor in [0, 1], a folder
    r.score, r.anomalous, r.anomaly_map
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .calibration import check_scores
from .checkpoint import load_checkpoint, read_manifest
from .data.errors import ConfigError, DataError
from .data.folder import list_images
from .data.mvtec import IMAGE_SUFFIXES, _check_image, load_image
from .data.staging import make_staging
from .data.transforms import denormalize, output_size, transform_image
from .tiling import TiledMethod, group_by_size
from .utils import ensure_writable_dir, progress, resolve_device
from .viz import map_overlay

OPTIONS = {"checkpoint": "DIR, a checkpoint folder written with save_model=true",
           "input": "an image file or a folder of images",
           "output": "DIR, where maps, overlays and predictions.csv go",
           "threshold": "a number: overrides the calibrated threshold",
           "method": "the method the checkpoint must hold (optional check)",
           "device": "auto | cpu | cuda | cuda:N (default auto)",
           "batch_size": "images per batch, a positive integer (default: the training batch size)",
           "progress": "true | false (default true)",
           "engine": "torch | onnxruntime (default torch); onnxruntime: checkpoint=FILE.onnx from python -m adbench.export",
           "on_error": "stop | skip (default stop): skip scores the other files, lists the bad ones as status=skipped "
                       "rows in predictions.csv/json and exits with 1"}


@dataclass
class Result:
    """One scored image. ``anomalous`` is None when no threshold is known."""

    score: float
    anomalous: bool | None
    threshold: float | None
    anomaly_map: np.ndarray  # [H, W] float32, at the model's input resolution
    image: np.ndarray  # [H, W, 3] uint8, the resized (and cropped) input the map refers to
    path: str | None = None

    @property
    def decision(self) -> str:
        return "unknown" if self.anomalous is None else ("anomalous" if self.anomalous else "normal")


class _Items(Dataset):
    """Pre-transformed images as loader items ``{"image": [3, H, W], "path": str}``."""

    def __init__(self, images: list[torch.Tensor], names: list[str]) -> None:
        self.images, self.names = images, names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "path": self.names[i]}


class Detector:
    """A fitted method with its input transform and decision threshold, loaded from a checkpoint folder."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", threshold: float | None = None,
                 method: str | None = None, batch_size: int | None = None, progress: bool = False) -> None:
        self.device = resolve_device(device)
        self.model, self.manifest, self.cfg, self.calibration = load_checkpoint(
            checkpoint, self.device, method=method, progress=progress)
        self.checkpoint = Path(checkpoint)
        self.method_name = str(self.manifest["method"])
        size = self.manifest.get("image_size")
        self.image_size = int(size) if size is not None else None  # None: each image scored at its own size (tiling)
        self.crop_size = self.manifest.get("crop_size")
        default_bs = self.cfg.get("dataset", {}).get("batch_size", 8) if self.cfg else 8
        self.batch_size = int(batch_size or default_bs)
        if isinstance(self.model, TiledMethod):  # batch_size= sets the tiles per batch of a tiled model
            self.model.batch_size = self.batch_size
        self.threshold_override = threshold

    @property
    def threshold(self) -> float | None:
        """The override if given, else the calibrated threshold, else None."""
        if self.threshold_override is not None:
            return float(self.threshold_override)
        return self.calibration.threshold if self.calibration is not None else None

    def threshold_source(self) -> str:
        """Where :attr:`threshold` comes from, in words."""
        if self.threshold_override is not None:
            return "threshold= option"
        if self.calibration is not None:
            return self.calibration.describe()
        return "none"

    @property
    def map_scale(self) -> tuple[float, float] | None:
        """(low, high) of the overlays: the calibration's normal map values (median, maximum), fixed for the
        checkpoint; None without a calibration."""
        if self.calibration is None:
            return None
        return float(self.calibration.map_low), float(self.calibration.map_high)

    def _tensor_items(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unnormalised RGB/gray tensor(s) in [0, 1] (or uint8) -> transformed [3, H, W] tensors."""
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"tensor input must be [3, H, W] or [B, 3, H, W] (1 channel allowed); got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 255
        x = x.detach().float().cpu()
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ConfigError(f"tensor input values must lie in [0, 1] (got {x.min().item():.3g}..{x.max().item():.3g}); "
                              f"pass the unnormalised image, e.g. torchvision's to_tensor(img)")
        out = []
        for t in x:  # same path as files: 8-bit PIL image -> resize/crop -> ImageNet normalisation
            arr = (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out.append(transform_image(Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr),
                                       self.image_size, self.crop_size))
        return out

    def _gather(self, x: Any) -> tuple[list[torch.Tensor], list[str | None], bool]:
        """(transformed images, their paths, whether a single image was given)."""
        if isinstance(x, (str, Path)):
            p = Path(x)
            if p.is_dir():
                files = list_images(p)
                if not files:
                    raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {p}; pass input=IMAGE_OR_FOLDER")
                for f in files:  # every file is checked before any model work
                    _check_image(f)
                return [self.load_file(f) for f in files], [str(f) for f in files], False
            if not p.is_file():
                raise DataError(f"input not found: {p}; pass input=IMAGE_OR_FOLDER")
            _check_image(p)
            return [self.load_file(p)], [str(p)], True
        if isinstance(x, Image.Image):
            return [transform_image(x, self.image_size, self.crop_size)], [None], True
        if isinstance(x, np.ndarray):  # [H, W] or [H, W, C], uint8 or float in [0, 1]
            t = torch.from_numpy(np.ascontiguousarray(x))
            return self._gather(t[None] if t.ndim == 2 else t.permute(2, 0, 1))
        if isinstance(x, torch.Tensor):
            items = self._tensor_items(x)
            return items, [None] * len(items), x.ndim == 3
        if isinstance(x, Sequence):
            imgs, paths = [], []
            for item in x:
                i, p, _ = self._gather(item)
                imgs += i
                paths += p
            return imgs, paths, False
        raise ConfigError(f"cannot predict on {type(x).__name__}; pass a path, a folder, a PIL image or a tensor")

    def predict(self, x: Any) -> Result | list[Result]:
        """Score images: one :class:`Result` for one image, a list for a folder, a sequence or a batch tensor."""
        images, paths, single = self._gather(x)
        results = self.score(images, paths)
        return results[0] if single else results

    def load_file(self, path: str | Path) -> torch.Tensor:
        """An image file decoded and transformed as in training: [3, H, W] (DataError names a bad file, or one
        smaller than the tiles of a tiled model)."""
        img = transform_image(load_image(Path(path)), self.image_size, self.crop_size)
        tiling = self.model.tiling if isinstance(self.model, TiledMethod) else None
        if tiling is not None and min(img.shape[-2:]) < tiling.size:
            raise DataError(f"{path} is {img.shape[-1]}x{img.shape[-2]} px, smaller than the model's "
                            f"{tiling.size} px tiles: it cannot be scored")
        return img

    @property
    def map_size(self) -> list[int] | None:
        """[H, W] of every anomaly map; None when each map has its own image's size (tiling at native size)."""
        size = output_size(self.image_size, self.crop_size)
        return list(size) if size is not None else None

    def score(self, images: list[torch.Tensor], paths: list[str | None]) -> list[Result]:
        """Score already transformed images ([3, H, W] each, from :meth:`load_file`)."""
        names = [p or f"image_{i:05d}" for i, p in enumerate(paths)]
        scored: dict[int, tuple[float, np.ndarray]] = {}
        for idx in group_by_size([img.shape[-2:] for img in images]):  # sizes differ only with tiling
            bs = 1 if isinstance(self.model, TiledMethod) else self.batch_size  # it batches the tiles itself
            loader = DataLoader(_Items([images[i] for i in idx], [names[i] for i in idx]), batch_size=bs,
                                shuffle=False)
            pred = self.model.predict(loader)
            check_scores(pred, self.method_name, [names[i] for i in idx], "the input images",
                         fix=f"the model in {self.checkpoint} may be corrupt: retrain it with save_model=true (or "
                             f"export it again)")
            scored.update({i: (float(pred.image_scores[k]), pred.anomaly_maps[k]) for k, i in enumerate(idx)})
        thr = self.threshold
        results = []
        for i, img in enumerate(images):
            score, amap = scored[i]
            results.append(Result(score=score, anomalous=None if thr is None else bool(score > thr), threshold=thr,
                                  anomaly_map=amap, image=_rgb(img), path=paths[i]))
        return results

    def overlay(self, r: Result, scale: tuple[float, float] | None = None) -> Image.Image:
        """The anomaly map over the input on one fixed scale, with a colour bar and the scale printed below it:
        cold at ``scale[0]``, fully hot from ``scale[1]``. The scale defaults to :attr:`map_scale` (the
        calibration's: the normal images' median map value and maximum); without a calibration pass one for all
        images (``adbench.predict`` uses the range of all maps of its run), else the map's own range is used. A red
        frame marks an anomalous decision."""
        scale = scale or self.map_scale or (float(r.anomaly_map.min()), float(r.anomaly_map.max()))
        return map_overlay(r.image, r.anomaly_map, scale[0], scale[1], r.anomalous)


ENGINES = ("torch", "onnxruntime")


def load(checkpoint: str | Path, device: str = "auto", threshold: float | None = None,
         method: str | None = None, batch_size: int | None = None, engine: str = "torch") -> Detector:
    """Load a checkpoint folder for prediction (see :class:`Detector`); ``engine="onnxruntime"``: an ONNX file
    written by :mod:`adbench.export` instead (see :mod:`adbench.onnx_runtime`)."""
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine} is not known; pass engine=torch or engine=onnxruntime")
    if engine == "onnxruntime":
        from .onnx_runtime import load_onnx

        return load_onnx(checkpoint, threshold=threshold, method=method, batch_size=batch_size)
    return Detector(checkpoint, device=device, threshold=threshold, method=method, batch_size=batch_size)


def _output_names(files: list[Path], input_path: Path) -> list[Path]:
    """Relative output names: each input's path below the input folder (a single file: its name), extension
    kept, so ``a.png`` and ``a.jpg`` get ``a.png.npy`` and ``a.jpg.npy``. Two names that would still meet in
    ``output=`` (a file and a folder of one name, or names differing only in case on a case-insensitive disk)
    raise DataError naming both inputs, before any model work."""
    names = [Path(input_path.name)] if input_path.is_file() else [Path(f).relative_to(input_path) for f in files]
    folders = {p.as_posix().casefold(): f for f, n in zip(files, names) for p in n.parents if p != Path(".")}
    taken: dict[str, Path] = {}
    for f, n in zip(files, names):
        for out in (f"{n.as_posix()}.npy", f"{n.as_posix()}_overlay.png"):
            other = taken.get(out.casefold()) or folders.get(out.casefold())
            if other is not None and other != f:
                raise DataError(f"{f} and {other} would both write {out} in output= (names differing only in case, or "
                                f"a folder named like an output file); rename one of them")
            taken[out.casefold()] = f
    return names


FIELDS = ("path", "score", "threshold", "decision", "map", "overlay", "status", "reason")
TABLES = ("predictions.json", "predictions.csv")  # renamed into output= last, the CSV very last


def _rgb(image: torch.Tensor) -> np.ndarray:
    """A transformed image [3, H, W] back to uint8 RGB [H, W, 3] (what the map refers to)."""
    return (denormalize(image).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def write_map(r: Result, name: Path, folder: Path) -> str:
    """``<folder>/<name>.npy``: the anomaly map of one result; returns its path relative to ``folder``."""
    npy = folder / f"{name.as_posix()}.npy"
    npy.parent.mkdir(parents=True, exist_ok=True)
    with open(npy, "wb") as f:
        np.save(f, r.anomaly_map.astype(np.float32))
    return str(npy.relative_to(folder))


def write_overlay(det: Detector, r: Result, name: Path, folder: Path, scale: dict[str, Any]) -> str:
    """``<folder>/<name>_overlay.png`` drawn on ``scale`` ({"low", "high", "source"}, also stored in the PNG's
    ``adbench_scale`` text entry); returns its path relative to ``folder``."""
    from PIL.PngImagePlugin import PngInfo

    png = folder / f"{name.as_posix()}_overlay.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("adbench_scale", json.dumps(scale))
    det.overlay(r, (scale["low"], scale["high"])).save(png, format="PNG", pnginfo=info)
    return str(png.relative_to(folder))


def write_image_outputs(det: Detector, r: Result, name: Path, folder: Path,
                        scale: dict[str, Any] | None = None) -> dict[str, Any]:
    """The map and (given a ``scale``) the overlay of one result under ``folder`` (the staging folder); returns
    its table row (``overlay`` empty until drawn)."""
    npy = write_map(r, name, folder)
    png = write_overlay(det, r, name, folder, scale) if scale is not None else ""
    return {"path": r.path, "score": r.score, "threshold": r.threshold, "decision": r.decision,
            "map": npy, "overlay": png, "status": "ok", "reason": ""}


def skipped_row(path: str, reason: str, threshold: float | None) -> dict[str, Any]:
    """The table row of a file that ``on_error=skip`` left out."""
    return {"path": path, "score": None, "threshold": threshold, "decision": "skipped", "map": "", "overlay": "",
            "status": "skipped", "reason": reason}


def write_tables(det: Detector | None, rows: list[dict[str, Any]], folder: Path,
                 scale: dict[str, Any] | None = None) -> None:
    """All scores and decisions in ``<folder>/predictions.csv`` and ``predictions.json`` (the staging folder)."""
    meta: dict[str, Any] = {"checkpoint": None, "method": None, "threshold": None, "threshold_source": None,
                            "calibration": None, "map_size": None}
    if det is not None:
        meta.update(checkpoint=str(det.checkpoint), method=det.method_name, threshold=det.threshold,
                    threshold_source="option" if det.threshold_override is not None else
                    ("calibration" if det.calibration is not None else None),
                    calibration=det.calibration.to_dict() if det.calibration is not None else None,
                    map_size=det.map_size)
    meta.update(overlay_scale=scale, n_images=len(rows), n_skipped=sum(r["status"] == "skipped" for r in rows),
                predictions=rows)
    (folder / "predictions.json").write_text(json.dumps(meta, indent=2))
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELDS))
        w.writeheader()
        w.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in FIELDS} for row in rows)


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments; unknown keys and missing required ones raise ConfigError naming them."""
    opts: dict[str, str] = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep:
            raise ConfigError(f"argument {a!r} is not key=value; usage: python -m adbench.predict checkpoint=DIR "
                              f"input=IMAGE_OR_FOLDER output=DIR")
        if key not in OPTIONS:
            raise ConfigError(f"unknown option {key}={value}; known options: {', '.join(OPTIONS)}")
        opts[key] = value
    for key in ("checkpoint", "input", "output"):
        if key not in opts:
            raise ConfigError(f"missing option {key}=...: {OPTIONS[key]}")
    return opts


def parse_options(opts: dict[str, str]) -> dict[str, Any]:
    """Typed values of the optional options, each checked (ConfigError names the option and its valid values)."""
    out: dict[str, Any] = {"threshold": None, "batch_size": None, "progress": True, "on_error": "stop",
                           "device": opts.get("device", "auto"), "method": opts.get("method")}
    if "threshold" in opts:
        try:
            out["threshold"] = float(opts["threshold"])
        except ValueError:
            raise ConfigError(f"threshold={opts['threshold']} is not a number; pass threshold=X") from None
        if not math.isfinite(out["threshold"]):
            raise ConfigError(f"threshold={opts['threshold']} is not a finite number; pass threshold=X")
    if "batch_size" in opts:
        try:
            out["batch_size"] = int(opts["batch_size"])
        except ValueError:
            out["batch_size"] = 0
        if out["batch_size"] < 1:
            raise ConfigError(f"batch_size={opts['batch_size']} is not a positive integer; pass batch_size=N "
                              f"(e.g. batch_size=8)")
    out["engine"] = opts.get("engine", "torch")
    for key, allowed in (("progress", ("true", "false")), ("on_error", ("stop", "skip")), ("engine", ENGINES)):
        if key in opts:
            value = opts[key].lower()
            if value not in allowed:
                raise ConfigError(f"{key}={opts[key]} must be {' or '.join(allowed)}")
            out[key] = value != "false" if key == "progress" else value
    return out


def check_output_outside_input(input_path: Path, output: Path) -> None:
    """``output=`` equal to or inside a folder ``input=`` is refused: the next run would score the overlays."""
    if not input_path.is_dir():
        return
    inp, out = input_path.resolve(), output.resolve()
    if out == inp or inp in out.parents:
        raise ConfigError(f"output={output} is inside input={input_path}: the maps and overlays written there would "
                          f"be scored as images by the next run on it; pass an output folder outside the input folder")


def _input_files(input_path: Path, on_error: str = "stop") -> tuple[list[Path], dict[str, str]]:
    """The image files named by ``input=``, each decoded once: (good files, {bad file: reason}).

    With ``on_error="stop"`` the first bad file raises DataError naming it.
    """
    if input_path.is_dir():
        files = list_images(input_path)
        if not files:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in input={input_path}; pass input=IMAGE_OR_FOLDER")
    elif input_path.is_file():
        files = [input_path]
    else:
        raise DataError(f"input={input_path} not found; pass input=IMAGE_OR_FOLDER")
    good, bad = [], {}
    for f in files:
        try:
            _check_image(f)
            good.append(f)
        except DataError as err:
            if on_error == "stop":
                raise
            bad[str(f)] = str(err)
    return good, bad


def _predict_into(det: Detector, files: list[Path], names: list[Path], staging: Path, on_error: str,
                  show: bool) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, Any] | None]:
    """Score ``files`` and write their maps and overlays under ``staging``: (rows, {skipped file: reason}, the
    overlays' scale). Overlays are drawn on the checkpoint's fixed scale (its calibration's); without one on the
    range of every map of this run, in a second pass once all are known (each image decoded again)."""
    rows, skipped, later = [], {}, []
    fixed = det.map_scale
    scale = None if fixed is None else {"low": fixed[0], "high": fixed[1], "source": "calibration"}
    lows, highs = [], []
    chunk = det.batch_size * 4 if det.map_size is not None else 8  # bounded memory (full-size images: 8 at once)
    for i in progress(range(0, len(files), chunk), "predict", show, unit="chunk"):
        images, paths, chunk_names = [], [], []
        for f, name in zip(files[i : i + chunk], names[i : i + chunk]):
            try:
                images.append(det.load_file(f))
            except DataError as err:  # changed since the check
                if on_error == "stop":
                    raise
                skipped[str(f)] = str(err)
                continue
            paths.append(str(f))
            chunk_names.append(name)
        if not images:
            continue
        for r, name in zip(det.score(images, paths), chunk_names):
            rows.append(write_image_outputs(det, r, name, staging, scale))
            if scale is None:
                later.append((rows[-1], name, r.anomalous))
                lows.append(float(np.median(r.anomaly_map)))
                highs.append(float(r.anomaly_map.max()))
            print(f"{r.decision:<9}  {r.score:.6g}  {r.path}")
    if later:  # no calibration: one scale for the whole run, from its own maps
        low, high = float(np.median(lows)), max(highs)
        scale = {"low": low, "high": high if high > low else low + 1e-12, "source": "this run's maps (no calibration)"}
        for row, name, anomalous in later:
            amap = np.load(staging / row["map"])
            r = Result(score=row["score"], anomalous=anomalous, threshold=row["threshold"], anomaly_map=amap,
                       image=_rgb(det.load_file(row["path"])), path=row["path"])
            row["overlay"] = write_overlay(det, r, name, staging, scale)
    return rows, skipped, scale


def _commit(staging: Path, output: Path, names: list[str]) -> None:
    """Rename the files ``names`` (relative paths) from ``staging`` into ``output``, in order; all or nothing.

    A file of ``output`` that is replaced is first moved into the staging folder; when any step fails, every
    file already renamed is removed, every replaced file put back and every folder made removed, then the error
    is raised again: ``output`` is as it was.
    """
    kept = staging / ".replaced"
    done: list[tuple[Path, Path | None, bool]] = []  # (destination, the old file kept aside, new file placed)
    made: list[Path] = []
    try:
        for name in names:
            dest = output / name
            for folder in reversed(dest.relative_to(output).parents[:-1]):
                if not (output / folder).is_dir():
                    (output / folder).mkdir()
                    made.append(output / folder)
            old = None
            if dest.is_file() or dest.is_symlink():
                old = kept / name
                old.parent.mkdir(parents=True, exist_ok=True)
                os.replace(dest, old)
            done.append((dest, old, False))
            os.replace(staging / name, dest)
            done[-1] = (dest, old, True)
    except BaseException:
        for dest, old, placed in reversed(done):
            try:
                if placed:
                    dest.unlink()
                if old is not None:
                    os.replace(old, dest)
            except OSError:
                pass
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


def check_checkpoint(checkpoint: str, engine: str) -> None:
    """The cheap checks of ``checkpoint=`` (it exists, is a checkpoint folder or an ONNX file), done before the
    input files are read; :func:`load` later verifies every file."""
    if engine == "onnxruntime":
        from .onnx_runtime import check_path

        check_path(checkpoint)
    else:
        read_manifest(checkpoint)


def write_error(output: Path, err: OSError) -> ConfigError:
    """The one line of a failed write into ``output=``."""
    import errno

    fix = "free some space or pass output=DIR" if err.errno == errno.ENOSPC else "pass a writable output=DIR"
    return ConfigError(f"cannot write the outputs to output={output} ({err.strerror or err}); {fix}; nothing in "
                       f"{output} was changed (predictions.csv was not updated)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.split("Python::")[0].strip())
        print("\nOptions:\n" + "\n".join(f"  {k}=...  {v}" for k, v in OPTIONS.items()))
        return 0
    staging: Path | None = None
    output: Path | None = None
    made_output = finished = False
    try:
        opts = parse_args(argv)
        o = parse_options(opts)
        output = Path(opts["output"])
        input_path = Path(opts["input"])
        check_output_outside_input(input_path, output)
        check_checkpoint(opts["checkpoint"], o["engine"])  # a wrong checkpoint= stops before the files are read
        files, skipped = _input_files(input_path, o["on_error"])  # every file checked before the model is loaded
        names = _output_names(files, input_path)
        made_output = not output.exists()
        ensure_writable_dir(output, "output")
        try:  # loaded even when every file was skipped: a bad checkpoint is an error, not "3 of 3 skipped"
            det = load(opts["checkpoint"], device=o["device"], threshold=o["threshold"], method=o["method"],
                       batch_size=o["batch_size"], engine=o["engine"])
        except RuntimeError as err:  # e.g. torch.device("nonsense")
            raise ConfigError(f"device={o['device']}: {err}; pass device=auto, cpu, cuda or cuda:N") from None
        thr = det.threshold
        try:
            staging = make_staging(output, ".adbench-predict")
            rows, scale = [], None
            if files:
                rows, late, scale = _predict_into(det, files, names, staging, o["on_error"], o["progress"])
                skipped.update(late)
            rows += [skipped_row(p, reason, thr) for p, reason in skipped.items()]
            rows.sort(key=lambda r: r["path"])
            write_tables(det, rows, staging, scale)
            _commit(staging, output, [r[k] for r in rows for k in ("map", "overlay") if r[k]] + list(TABLES))
        except OSError as err:  # e.g. ENOSPC: the probe of ensure_writable_dir cannot see a full disk
            raise write_error(output, err) from None
        finished = True
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if made_output and not finished:  # a failed run leaves nothing, not even the folder it made
            try:
                output.rmdir()
            except OSError:
                pass
    table = output / "predictions.csv"
    scored = [r for r in rows if r["status"] == "ok"]
    if thr is None:
        print(f"no threshold: {det.checkpoint} holds no calibrated threshold; pass threshold=X for normal/anomalous "
              f"decisions, or retrain with save_model=true (which calibrates)", file=sys.stderr)
        verdict = "no threshold: scores only"
    else:
        verdict = f"{sum(r['decision'] == 'anomalous' for r in scored)} anomalous (threshold {thr:.6g}: " \
                  f"{det.threshold_source()})"
    print(f"{len(scored)} image(s), {verdict}; maps, overlays and {table.name} in {output}")
    if skipped:
        first = next(iter(sorted(skipped)))
        print(f"error: {len(skipped)} of {len(rows)} file(s) skipped (on_error=skip), the other {len(scored)} scored; "
              f"first: {skipped[first]}; every skipped file is a status=skipped row of {table}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
