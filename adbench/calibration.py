"""Decision threshold calibrated at fit time on normal training images held out from training.

``calibration.holdout`` (a fraction) of the training images is set aside before ``fit`` (fixed by the run
seed); after ``fit`` the method scores them, and the threshold is the ``calibration.quantile`` of those
normal scores. Test labels are never used. The result is stored in the checkpoint as ``calibration.json``.

A model saved without a holdout (``calibration.holdout=0``, the benchmark datasets' default) is fitted on every
training image, as the paper protocols ask, and still gets a threshold (:func:`proxy_calibration`,
``source="proxy"``): a second model of the same config is fitted on 90 % of the training images and scores the
other 10 %, normal images it has not seen; their quantile is the threshold. Scoring the saved model's own training
images instead (``source="train"``, in-sample, kept only for a single training image) is far too optimistic:
on MVTec AD bottle (PatchCore, ``preset=cpu``) it put the threshold at 2.96, below every good test image (test
FPR 1.000), where this calibration gives 11.1 (FPR 0.000, TPR 0.984).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch.utils.data import DataLoader, Subset

from .api import Prediction
from .data.errors import ConfigError, ScoreError
from .data.mvtec import AnomalyDataset, Sample
from .tiling import group_by_size

CALIBRATION_FILE = "calibration.json"


SOURCES = ("holdout", "proxy", "train")  # held out from the model; held out from a second fit; in-sample
_FIX = "retrain with save_model=true, or delete it and pass threshold=X to adbench.predict"


@dataclass
class Calibration:
    """Threshold on image scores (``score > threshold`` means anomalous) and the normal score ranges."""

    threshold: float
    quantile: float
    holdout: float
    n_images: int
    scores: list[float]  # image scores of the held-out normal images
    map_low: float  # median anomaly-map value on held-out normal images (overlay: cold)
    map_high: float  # highest anomaly-map value on held-out normal images (overlay: fully hot above it)
    source: str = "holdout"  # "proxy": held out from a second fit; "train": the fitting images (in-sample)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def in_sample(self) -> bool:
        return self.source == "train"

    def describe(self) -> str:
        """Where the threshold comes from, for the run's and predict's output."""
        if self.in_sample:
            return (f"quantile {self.quantile} of the {self.n_images} training images' own scores: in-sample, "
                    f"optimistic; calibration.holdout=0.1 gives a held-out threshold")
        if self.source == "proxy":
            return (f"quantile {self.quantile} of {self.n_images} normal training images held out from a second fit "
                    f"on the others; the saved model was fitted on all of them")
        return f"quantile {self.quantile} of {self.n_images} held-out normal images"

    @classmethod
    def from_dict(cls, d: Any, where: str = "calibration", fix: str = _FIX) -> "Calibration":
        """A calibration from its JSON form, every field checked: ConfigError (one line: ``where``, the field,
        ``fix``) when it is not an object, misses a field, or holds a value that cannot be used."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where} is corrupt (a JSON {type(d).__name__}, not an object); {fix}")
        required = [f.name for f in fields(cls) if f.name != "source"]  # files before "source" lack it
        missing = [k for k in required if k not in d]
        if missing:
            raise ConfigError(f"{where} is incomplete (no {', '.join(missing)}); {fix}")
        for k in ("threshold", "quantile", "holdout", "map_low", "map_high"):
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{where}: {k} is {v!r}, not a finite number; {fix}")
        problems = []
        if not 0 < d["quantile"] <= 1:
            problems.append(f"quantile is {d['quantile']!r}, not in (0, 1]")
        if not 0 <= d["holdout"] < 1:
            problems.append(f"holdout is {d['holdout']!r}, not in [0, 1)")
        if isinstance(d["n_images"], bool) or not isinstance(d["n_images"], int) or d["n_images"] < 1:
            problems.append(f"n_images is {d['n_images']!r}, not a positive integer")
        if not isinstance(d["scores"], list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in d["scores"]):
            problems.append("scores is not a list of finite numbers")
        if d["map_high"] < d["map_low"]:
            problems.append(f"map_high {d['map_high']!r} is below map_low {d['map_low']!r}")
        if d.get("source", "holdout") not in SOURCES:
            problems.append(f"source is {d.get('source')!r}, not one of {', '.join(SOURCES)}")
        if problems:
            raise ConfigError(f"{where}: {problems[0]}; {fix}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def save(self, directory: str | Path) -> Path:
        from .results import write_json_atomic

        return write_json_atomic(Path(directory) / CALIBRATION_FILE, self.to_dict())

    @classmethod
    def load(cls, directory: str | Path) -> "Calibration | None":
        """The calibration stored in a checkpoint folder, None when it was trained without one; ConfigError
        (one line naming the file) when it is unreadable, incomplete or its numbers are not finite."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path} is unreadable or corrupt ({type(err).__name__}); {_FIX}") from None
        return cls.from_dict(d, str(path))


def check_options(holdout: float, quantile: float) -> None:
    """Reject calibration options that cannot work (before any model work)."""
    if not 0 <= holdout < 1:
        raise ConfigError(f"calibration.holdout={holdout} must be in [0, 1) (0: no threshold calibration)")
    if not 0 < quantile <= 1:
        raise ConfigError(f"calibration.quantile={quantile} must be in (0, 1]")


def split_holdout(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(training samples, held-out calibration samples); at least one of each, order preserved, fixed by seed."""
    samples = list(samples)
    if fraction <= 0:
        return samples, []
    n = len(samples)
    n_hold = max(1, int(round(fraction * n)))
    if n - n_hold < 1:
        raise ConfigError(f"calibration.holdout={fraction} leaves no training images ({n} normal images); "
                          f"lower it or pass calibration.holdout=0")
    held = set(np.random.default_rng([seed, 0xCA1]).permutation(n)[:n_hold].tolist())
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def calibration_loader(samples: Sequence[Sample], image_size: int, crop_size: int | None, batch_size: int) -> DataLoader:
    """Loader over held-out normal images, batches ``{"image", "path"}`` like the test loader."""
    ds = AnomalyDataset(list(samples), image_size, crop_size, with_labels=False)
    if ds.out_size is None:  # images at their own sizes (tiling): one full-resolution image per batch
        batch_size = 1
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


TRAINING_FIX = "check method.* options (e.g. a lower learning rate) or try another seed"


def check_scores(pred: Prediction, method: str, paths: Sequence[str | Path], where: str,
                 fix: str = TRAINING_FIX) -> None:
    """Raise ScoreError (one line ending in ``fix``) when image scores or maps hold NaN or inf."""
    bad_img = ~np.isfinite(pred.image_scores)
    bad_map = ~np.isfinite(pred.anomaly_maps).reshape(len(pred.anomaly_maps), -1).any(axis=1)
    if not bad_img.any() and not bad_map.any():
        return
    first = int(np.flatnonzero(bad_img | bad_map)[0])
    n_px = int(np.size(pred.anomaly_maps) - np.count_nonzero(np.isfinite(pred.anomaly_maps)))
    raise ScoreError(
        f"method {method} produced NaN/inf scores on {where}: {int(bad_img.sum())} image score(s) and {n_px} map "
        f"value(s) (first: {paths[first] if first < len(paths) else first}); nothing was computed from them. "
        f"Fix: {fix}"
    )


def calibrate(method: Any, loader: DataLoader, quantile: float, holdout: float, name: str = "",
              source: str = "holdout") -> Calibration:
    """Score normal images with the fitted ``method`` and set the threshold at ``quantile``: held-out ones
    (``source="holdout"``) or the training images themselves (``source="train"``, in-sample)."""
    ds = loader.dataset
    paths = [s.path for s in ds.samples] if hasattr(ds, "samples") else []
    groups = [list(range(len(ds)))]
    if getattr(ds, "out_size", ()) is None and hasattr(ds, "item_size"):  # own sizes (tiling): one call per size
        groups = group_by_size([ds.item_size(i) for i in range(len(ds))])
    scores = np.zeros(len(ds), dtype=np.float64)
    values = []
    for idx in groups:
        part = loader if len(groups) == 1 else DataLoader(Subset(ds, idx), batch_size=loader.batch_size,
                                                          shuffle=False, num_workers=0)
        pred: Prediction = method.predict(part)
        check_scores(pred, name or type(method).__name__, [paths[i] for i in idx] if paths else [],
                     "held-out calibration images" if source == "holdout" else "the training images (calibration)")
        scores[idx] = pred.image_scores.astype(np.float64)
        values.append(np.asarray(pred.anomaly_maps).ravel())
    maps = np.concatenate(values)
    low, high = float(np.median(maps)), float(maps.max())
    return Calibration(threshold=float(np.quantile(scores, quantile)), quantile=float(quantile),
                       holdout=float(holdout), n_images=int(len(scores)), scores=[float(s) for s in scores],
                       map_low=low, map_high=high if high > low else low + 1e-12, source=source)


def proxy_calibration(build: Callable[[], Any], dm: Any, quantile: float, seed: int, name: str = "",
                      fraction: float = 0.1) -> Calibration:
    """The threshold of a model fitted on all of ``dm.train_samples`` (no holdout), from a stand-in: ``build()``
    makes a fresh, unfitted method of the same config, fitted here on the training images less a seeded
    ``fraction`` (as :func:`split_holdout` draws it), which it then scores (``source="proxy"``). The threshold is
    calibrated on normal images the scoring model has not seen, as with ``calibration.holdout``; the saved model
    saw 10 % more images, so it scores new normal images, if anything, a little lower (fewer false alarms, not
    more). It costs a second fit. With a single training image there is nothing to hold out: its own score is used
    (``source="train"``, in-sample)."""
    full = list(dm.train_samples)
    if len(full) < 2:
        raise ValueError("proxy_calibration needs at least two training images")
    fit_samples, held = split_holdout(full, fraction, seed)
    proxy = build()
    dm.train_samples = fit_samples
    try:
        loader = dm.train_dataloader()
    finally:
        dm.train_samples = full
    proxy.fit(loader)
    held_loader = calibration_loader(held, dm.image_size, dm.crop_size, dm.batch_size)
    return calibrate(proxy, held_loader, quantile, fraction, name, source="proxy")


def threshold_rates(threshold: float, scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """How a threshold fared on labelled images (reporting only): FPR on normal, TPR on anomalous."""
    scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    above = scores > threshold
    fpr = float(above[~labels].mean()) if (~labels).any() else None
    tpr = float(above[labels].mean()) if labels.any() else None
    return {"test_fpr": fpr, "test_tpr": tpr}
