"""The run: data -> method.fit -> method.predict -> evaluator -> one JSON record. Wired by Hydra in __main__."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .api import Prediction, RunContext
from .cache import data_id, entries_used
from .calibration import (Calibration, calibrate, calibration_loader, check_options, check_scores, proxy_calibration,
                          split_holdout, threshold_rates)
from .checkpoint import verify_checkpoint, write_checkpoint
from .data.errors import ConfigError, DataError
from .data.mvtec import MVTecDataModule
from .data.synthetic import SyntheticDataModule
from .evaluate import compute_metrics, metric_curves
from .registry import get_method, list_methods
from .results import (clean_metrics, config_hash, failure_path, git_commit, package_versions, read_record, run_path,
                      warn, write_json_atomic)
from .tiling import TiledMethod, Tiling, tiling_note
from .trainlog import check_logger, record_log, tensorboard_dir, write_tensorboard
from .utils import ensure_writable_dir, peak_rss_mb, resolve_device, seed_everything, write_dir_atomic, write_failed

log = logging.getLogger("adbench")


def build_datamodule(cfg: DictConfig) -> MVTecDataModule:
    """The datamodule named by ``cfg.dataset.name`` for ``cfg.category``."""
    d = cfg.dataset
    common = dict(root=d.root, category=str(cfg.category), image_size=d.image_size, crop_size=d.crop_size,
                  batch_size=d.batch_size, num_workers=d.num_workers, check=d.get("check_files", True))
    if d.name == "mvtec":
        return MVTecDataModule(**common)
    if d.name == "synthetic":
        g = d.generator
        return SyntheticDataModule(**common, generator_seed=g.seed, n_train=g.n_train, n_test_good=g.n_test_good,
                                   n_per_defect=g.n_per_defect, synth_size=g.size,
                                   defect_scale=g.get("defect_scale", 1.0))
    if d.name == "folder":
        from .data.folder import FolderDataModule

        return FolderDataModule.from_cfg(cfg)
    builder = DATAMODULES.get(str(d.name))
    if builder is None:
        raise ConfigError(f"unknown dataset.name={d.name!r}; known: mvtec, synthetic, folder, {', '.join(DATAMODULES)}")
    return builder(cfg)


# extra datamodule builders by dataset name (cfg -> datamodule); see adbench.data for the built-in ones
DATAMODULES: dict[str, Any] = {}


def format_metrics(metrics: dict[str, Any], title: str) -> str:
    """The end-of-run table: one metric per line; an undefined metric shows ``null``, as in the record."""
    width = max(len(k) for k in metrics) if metrics else 10
    lines = [title, "-" * max(len(title), width + 10)]
    for k, v in metrics.items():
        lines.append(f"{k:<{width}}  " + ("null" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"))
    return "\n".join(lines)


def resume_enabled(value: Any) -> bool:
    """``resume``: true / false, or ``auto`` = true inside a Hydra multirun (``-m``) sweep, false otherwise."""
    if isinstance(value, str) and value.lower() == "auto":
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, bool) or value is None:
        return bool(value)
    raise ConfigError(f"resume={value!r}; choose true, false or auto")


@dataclass
class RunSetup:
    """What the steps of one run share: its config, where its outputs go, its data and its (unfitted) method."""

    cfg: DictConfig
    resolved: dict[str, Any]
    method_name: str
    results_dir: Path
    out_path: Path  # the JSON record
    work_dir: Path  # the checkpoint folder (also the method's scratch folder during fit)
    maps_dir: Path  # overlays
    dm: Any
    calib_samples: list
    has_masks: bool
    ctx: RunContext
    method: Any


@dataclass
class Fitted:
    """The outcome of fit + calibration."""

    calibration: Calibration | None
    fit_s: float
    calibrate_s: float


@dataclass
class Evaluation:
    """Test predictions and the metrics computed from them."""

    pred: Prediction
    labels: np.ndarray
    masks: np.ndarray
    defect_types: list[str]
    metrics: dict[str, float | None]
    undefined: list[str]  # metrics without a value
    extra_metrics: dict[str, dict[str, float | None]]
    calibration_record: dict[str, Any] | None
    predict_s: float
    evaluate_s: float


def check_method(cfg: DictConfig) -> str:
    """The registered method ``cfg.method.name``, or a ConfigError listing the registered ones."""
    method_name = str(cfg.method.name)
    if method_name not in list_methods():
        raise ConfigError(f"unknown method={method_name!r}; registered: {', '.join(list_methods())}")
    return method_name


def resume_check(cfg: DictConfig, out_path: Path, logger: str = "none") -> dict[str, Any] | None:
    """With resume on: the existing ``ok`` record at ``out_path`` when it has what this run asks for (the run is
    then skipped), else None (the run goes ahead). A checkpoint it names must pass :func:`verify_checkpoint`
    (manifest readable, every file with its listed size and SHA-256) and its overlays must exist."""
    if not resume_enabled(cfg.get("resume", False)) or not out_path.is_file():
        return None
    rec, problem = read_record(out_path)
    if rec is None:
        warn(f"{problem}; running it again")
        return None
    if rec.get("status") != "ok":
        return None
    wanted = [k for k, asked in (("overlays", cfg.get("save_maps")), ("checkpoint", cfg.get("save_model")),
                                 ("tensorboard", logger == "tensorboard")) if asked]
    missing = [k for k in wanted if not rec.get(k)]
    if missing:
        log.info("resume: %s has no %s, which this run asks for: running it again", out_path, " / ".join(missing))
        return None
    rel = out_path.relative_to(Path(str(cfg.results_dir)) / "runs").with_suffix("")
    if "checkpoint" in wanted:
        problem = verify_checkpoint(Path(str(cfg.results_dir)) / "checkpoints" / rel)
        if problem:
            print(f"resume: not trusting the checkpoint of {out_path}: {problem}; running it again")
            return None
    if "overlays" in wanted:
        maps_dir = Path(str(cfg.results_dir)) / "maps" / rel
        lost = [Path(str(o)).name for o in rec.get("overlays") or [] if not (maps_dir / Path(str(o)).name).is_file()]
        if lost:
            print(f"resume: overlays of {out_path} are missing in {maps_dir} ({', '.join(lost)}); running it again")
            return None
    log.info("resume: result exists, skipping %s", out_path)
    print(f"skipped (resume: result exists): {out_path}")
    return {**rec, "skipped": True, "path": str(out_path)}


def check_native_sizes(dm: Any, calib_samples: list, tiling: Tiling) -> int:
    """Images at their own sizes (``dataset.image_size=null``): every image must hold a tile, and the test images
    must share one size (the evaluator stacks their masks). One line naming a file, from the file headers (each
    read once). Returns the number of training tiles."""
    from .data.mvtec import AnomalyDataset

    n_train_tiles = 0
    test_sizes: dict[tuple[int, int], str] = {}
    for split, samples in (("train", dm.train_samples), ("calibration", calib_samples), ("test", dm.test_samples)):
        ds = AnomalyDataset(list(samples), None, None, with_labels=False)
        for i, smp in enumerate(ds.samples):
            h, w = ds.item_size(i)
            if min(h, w) < tiling.size:
                raise ConfigError(f"{smp.path} is {w}x{h} px, smaller than dataset.tiling.size={tiling.size}; lower "
                                  f"the tile size or remove the image")
            if split == "train":
                n_train_tiles += len(tiling.boxes(h, w))
            elif split == "test":
                test_sizes.setdefault((h, w), str(smp.path))
    if len(test_sizes) > 1:
        shown = ", ".join(f"{w}x{h} ({p})" for (h, w), p in list(test_sizes.items())[:3])
        raise DataError(f"the test images have {len(test_sizes)} different sizes ({shown}); with dataset.image_size=null "
                        f"the evaluator needs one size per test set: set dataset.image_size=N or test one size at a "
                        f"time")
    return n_train_tiles


def check_tiling(dm: Any, calib_samples: list, tiling: Tiling | None) -> None:
    """The input geometry before any model work: ``image_size=null`` needs tiling and no crop; tiles must fit the
    images (at native size: every file, from its header). Prints the tile count of a tiled run."""
    if tiling is None and dm.out_size is None:
        raise ConfigError("dataset.image_size=null (every image at its own size) needs tiling: set "
                          "dataset.tiling.size=N (e.g. 256), or set dataset.image_size=N")
    if dm.image_size is None and dm.crop_size:
        raise ConfigError(f"dataset.crop_size={dm.crop_size} with dataset.image_size=null would keep only the central "
                          f"{dm.crop_size} px of each image at its own size and drop the rest; pass "
                          f"dataset.crop_size=null (tiles cover the whole image) or set dataset.image_size=N")
    if tiling is None:
        return
    if dm.out_size is not None:
        per_image = len(tiling.boxes(*dm.out_size))  # a tile larger than the images: one line now, before the data
        print(f"tiling: {tiling.size} px tiles every {tiling.stride} px, {per_image} per {dm.out_size[1]}x"
              f"{dm.out_size[0]} image, {per_image * len(dm.train_samples)} training tiles")
    else:
        n_tiles = check_native_sizes(dm, calib_samples, tiling)
        print(f"tiling: {tiling.size} px tiles every {tiling.stride} px of each image at its own size, "
              f"{n_tiles} training tiles")


def build_context(cfg: DictConfig, resolved: dict[str, Any], method_name: str, results_dir: Path,
                  out_path: Path) -> RunSetup:
    """Seed, load and check the data (every data error surfaces here, before model work), build the method."""
    device = resolve_device(cfg.get("device", "auto"))
    seed_everything(int(cfg.seed))
    cal = cfg.get("calibration") or {}
    holdout, quantile = float(cal.get("holdout", 0.0)), float(cal.get("quantile", 0.99))
    check_options(holdout, quantile)
    tiling = Tiling.from_cfg(cfg.dataset.get("tiling"))
    dm = build_datamodule(cfg).setup()
    # normal training images held out to calibrate the decision threshold (never the test labels)
    dm.train_samples, calib_samples = split_holdout(dm.train_samples, holdout, int(cfg.seed))
    has_masks = bool(getattr(dm, "has_masks", True))
    if not has_masks:
        print("no masks (dataset.mask_dir not set): image metrics only; pixel_auroc and aupro are not computed")
    rel = out_path.relative_to(results_dir / "runs").with_suffix("")
    work_dir = results_dir / "checkpoints" / rel
    check_tiling(dm, calib_samples, tiling)
    ctx = RunContext(device=device, seed=int(cfg.seed), category=str(cfg.category), is_texture=dm.is_texture,
                     grayscale=dm.grayscale, image_size=(tiling.size, tiling.size) if tiling else dm.out_size,
                     work_dir=work_dir, progress=bool(cfg.get("progress", True)),
                     feature_cache=Path(cfg.feature_cache) if cfg.get("feature_cache") else None,
                     data_id=data_id(cfg.dataset.name, cfg.dataset.root, cfg.category, dm.image_size, dm.crop_size,
                                     tiling.to_dict() if tiling else None,
                                     # the images' contents, hashed only when the cache is on
                                     files=[smp.path for smp in (*dm.train_samples, *calib_samples, *dm.test_samples)]
                                     if cfg.get("feature_cache") else ()))
    try:
        method = get_method(method_name)(cfg.method, ctx)
    except ConfigError as err:
        if tiling is None:
            raise
        raise ConfigError(f"{err} ({tiling_note(tiling)})") from None
    if tiling is not None:  # the method sees tiles; the harness sees whole images
        method = TiledMethod(method, tiling, batch_size=int(cfg.dataset.batch_size))
    return RunSetup(cfg=cfg, resolved=resolved, method_name=method_name, results_dir=results_dir, out_path=out_path,
                    work_dir=work_dir, maps_dir=results_dir / "maps" / rel, dm=dm, calib_samples=calib_samples,
                    has_masks=has_masks, ctx=ctx, method=method)


def fit_and_calibrate(s: RunSetup) -> Fitted:
    """``method.fit`` on the training images, then the threshold from the held-out normal images (if any)."""
    cal = s.cfg.get("calibration") or {}
    holdout, quantile = float(cal.get("holdout", 0.0)), float(cal.get("quantile", 0.99))
    t0 = time.perf_counter()
    s.method.fit(s.dm.train_dataloader())
    fit_s = time.perf_counter() - t0
    calibration = None
    if s.calib_samples:
        loader = calibration_loader(s.calib_samples, s.dm.image_size, s.dm.crop_size, s.dm.batch_size)
        calibration = calibrate(s.method, loader, quantile, holdout, s.method_name)
    return Fitted(calibration=calibration, fit_s=fit_s, calibrate_s=time.perf_counter() - t0 - fit_s)


def calibrate_saved_model(s: RunSetup) -> Calibration:
    """The calibration of a model fitted without a holdout: a second model of the same config fitted on 90 % of
    the training images scores the other 10 % (its training files go to a temporary folder, no feature cache);
    with one training image, its own score (in-sample)."""
    import dataclasses
    import tempfile

    dm, cfg = s.dm, s.cfg
    quantile = float((cfg.get("calibration") or {}).get("quantile", 0.99))
    if len(dm.train_samples) < 2:
        loader = calibration_loader(dm.train_samples, dm.image_size, dm.crop_size, dm.batch_size)
        return calibrate(s.method, loader, quantile, 0.0, s.method_name, source="train")
    tiling = Tiling.from_cfg(cfg.dataset.get("tiling"))
    with tempfile.TemporaryDirectory(prefix="adbench-proxy-") as tmp:
        def build() -> Any:
            ctx = dataclasses.replace(s.ctx, work_dir=Path(tmp), feature_cache=None)
            method = get_method(s.method_name)(cfg.method, ctx)
            return TiledMethod(method, tiling, batch_size=int(cfg.dataset.batch_size)) if tiling else method

        seed_everything(int(cfg.seed))
        return proxy_calibration(build, dm, quantile, int(cfg.seed), s.method_name)


def predict_and_evaluate(s: RunSetup, fitted: Fitted) -> Evaluation:
    """Score the test images and compute the metrics (and those of any extra score maps the method offers)."""
    dm, name = s.dm, s.method_name
    t1 = time.perf_counter()
    pred: Prediction = s.method.predict(dm.test_dataloader())
    t2 = time.perf_counter()
    paths = [smp.path for smp in dm.test_samples]
    check_scores(pred, name, paths, "the test images")
    labels, masks, defect_types = dm.test_targets()
    if pred.anomaly_maps.shape != masks.shape:
        raise RuntimeError(f"method {name} returned maps of shape {pred.anomaly_maps.shape}, masks are {masks.shape}")
    gt_masks = masks if s.has_masks else None
    metrics, undefined = clean_metrics(compute_metrics(pred.image_scores, pred.anomaly_maps, labels, gt_masks,
                                                       defect_types))
    t3 = time.perf_counter()
    # a method may offer other score maps of the same fitted model (e.g. a baseline), evaluated alike
    extra_metrics = {}
    for key, extra in (getattr(s.method, "extra_predictions", None) or {}).items():
        check_scores(extra, f"{name} ({key})", paths, "the test images")
        extra_metrics[key] = clean_metrics(compute_metrics(extra.image_scores, extra.anomaly_maps, labels, gt_masks,
                                                           defect_types))[0]
    if fitted.calibration is None and s.cfg.get("save_model", False):
        # a saved model gets a threshold even without a holdout, from a second fit (calibration.proxy_calibration),
        # after the test metrics so that nothing above can depend on it
        t4 = time.perf_counter()
        fitted.calibration = calibrate_saved_model(s)
        fitted.calibrate_s += time.perf_counter() - t4
    calibration_record = None
    if fitted.calibration is not None:
        calibration_record = {**fitted.calibration.to_dict(),
                              **threshold_rates(fitted.calibration.threshold, pred.image_scores, labels)}
    return Evaluation(pred=pred, labels=labels, masks=masks, defect_types=list(defect_types), metrics=metrics, undefined=undefined,
                      extra_metrics=extra_metrics, calibration_record=calibration_record, predict_s=t2 - t1,
                      evaluate_s=t3 - t2)


def make_record(s: RunSetup, fitted: Fitted, ev: Evaluation) -> dict[str, Any]:
    """The run record (``overlays`` and ``checkpoint`` are filled in by :func:`write_outputs`)."""
    from .intervals import uncertainty_fields

    return {
        "status": "ok",
        "metrics": ev.metrics,
        "extra_metrics": ev.extra_metrics,
        "config": s.resolved,
        "config_hash": config_hash(s.resolved),
        "fit_s": round(fitted.fit_s, 3),
        "predict_s": round(ev.predict_s, 3),
        "evaluate_s": round(ev.evaluate_s, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "method_timings": {k: round(v, 3) for k, v in getattr(s.method, "timings", {}).items()},
        # a map kind chosen per run (score / standardize = auto): which, by what criterion, every candidate's figure
        "map_selection": getattr(s.method, "selection", None),
        "per_image": {  # for ROC curves and galleries
            "score": [float(v) for v in ev.pred.image_scores], "label": ev.labels.tolist(),
            "defect_type": ev.defect_types, "file": [f"{smp.defect_type}/{smp.path.name}" for smp in s.dm.test_samples],
        },
        "overlays": [],
        "curves": metric_curves(ev.pred.anomaly_maps, ev.masks) if s.has_masks else {},  # pixel ROC and PRO
        # 95 % bootstrap intervals of the four metrics, and the per-image pixel histograms paired comparisons need
        **uncertainty_fields(ev.pred.image_scores, ev.labels, ev.pred.anomaly_maps if s.has_masks else None,
                             ev.masks if s.has_masks else None),
        "train_log": record_log(s.method),  # the method's training curve, at most 300 points per stage
        "tensorboard": None,
        "n_train": len(s.dm.train_samples),
        "n_calibration": len(s.calib_samples),
        "calibrate_s": round(fitted.calibrate_s, 3),
        "calibration": ev.calibration_record,
        "pixel_metrics": s.has_masks,
        "checkpoint": None,
        "n_test": len(s.dm.test_samples),
        "device": str(s.ctx.device),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def print_summary(s: RunSetup, ev: Evaluation, record: dict[str, Any]) -> None:
    """The metrics table, times and threshold: printed before anything is written, so a failed write loses no
    number."""
    cfg = s.cfg
    title = f"{s.method_name} on {cfg.dataset.name}/{cfg.category} (seed {cfg.seed})"
    if not s.has_masks:
        title += ": image metrics only (no masks)"
    print(format_metrics(ev.metrics, title))
    for key, em in ev.extra_metrics.items():
        print(format_metrics({k: v for k, v in em.items() if not k.startswith("auroc_")}, f"  {key} (same model)"))
    if ev.undefined:
        print(undefined_reason(ev.undefined, ev.labels))
    print(f"fit {record['fit_s']:.1f}s  predict {record['predict_s']:.1f}s  evaluate {record['evaluate_s']:.1f}s  "
          f"peak RSS {record['peak_rss_mb']:.0f} MiB")
    if ev.calibration_record is not None:
        c = ev.calibration_record
        rates = "" if c["test_fpr"] is None or c["test_tpr"] is None else \
            f": on the test images FPR {c['test_fpr']:.3f}, TPR {c['test_tpr']:.3f}"
        print(f"threshold {c['threshold']:.6g} ({Calibration.from_dict(c).describe()}){rates}")


def undefined_reason(undefined: list[str], labels: np.ndarray) -> str:
    """One line saying which metrics are undefined (null) and why."""
    n, n_bad = len(labels), int(np.asarray(labels).astype(bool).sum())
    if n_bad == 0:
        why = f"the test set has only good images ({n}); add anomalous test images to measure them"
    elif n_bad == n:
        why = f"the test set has only anomalous images ({n}); add good test images to measure them"
    else:
        why = "the masks hold one class only (no anomalous or no normal pixel)"
    return f"undefined metrics (null in the record): {', '.join(undefined)}: {why}"


def write_outputs(s: RunSetup, fitted: Fitted, ev: Evaluation, record: dict[str, Any],
                  logger: str = "none") -> dict[str, Any]:
    """Checkpoint (``save_model``), overlays (``save_maps``), TensorBoard events (``logger=tensorboard``), then
    the record last: a record never names an output that is not complete. Each is written atomically
    (temporary file or folder + rename); a failed write (e.g. a full disk) raises a one-line ConfigError naming
    the path and leaves no partial file. Returns the record with ``path``."""
    cfg = s.cfg
    if cfg.get("save_model", False):
        try:
            write_checkpoint(s.work_dir, s.method, cfg, s.ctx, fitted.calibration)
        except OSError as err:
            raise write_failed(s.work_dir, err) from None
        record["checkpoint"] = str(s.work_dir)
    if cfg.get("save_maps", False):
        from .viz import save_overlays

        dataset = s.dm.test_dataset(with_labels=True)
        try:
            names = write_dir_atomic(s.maps_dir, lambda tmp: [p.name for p in save_overlays(dataset, ev.pred,
                                                                                            ev.labels, tmp)])
        except OSError as err:
            raise write_failed(s.maps_dir, err) from None
        record["overlays"] = [str(s.maps_dir / n) for n in names]
    if logger == "tensorboard":  # event files: train_log per step, final metrics, config as hyper-parameters
        tb = tensorboard_dir(s.results_dir, s.out_path)
        try:
            record["tensorboard"] = str(write_tensorboard(tb, getattr(s.method, "train_log", None) or [], ev.metrics,
                                                          s.resolved))
        except OSError as err:
            raise write_failed(tb, err) from None
    try:
        write_json_atomic(s.out_path, record)
    except OSError as err:
        raise write_failed(s.out_path, err) from None
    failure_path(s.out_path).unlink(missing_ok=True)  # a failure recorded beside an earlier ok record: superseded
    record["path"] = str(s.out_path)
    return record


def run(cfg: DictConfig) -> dict[str, Any]:
    """One run of ``cfg.method`` on ``cfg.dataset`` / ``cfg.category``; returns the record it writes.

    Steps: resume check, build context (data + method), fit + calibrate, predict + evaluate, print the metrics,
    write outputs (checkpoint, overlays, record).
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    method_name = check_method(cfg)
    out_path = run_path(str(cfg.results_dir), resolved)  # first: a value leaving results_dir creates nothing
    results_dir = ensure_writable_dir(str(cfg.results_dir), "results_dir")
    logger = check_logger(cfg.get("logger", "none"))
    skipped = resume_check(cfg, out_path, logger)
    if skipped is not None:
        return skipped
    setup = build_context(cfg, resolved, method_name, results_dir, out_path)
    with entries_used() as cache_entries:
        fitted = fit_and_calibrate(setup)
        ev = predict_and_evaluate(setup, fitted)
    record = make_record(setup, fitted, ev)
    record["feature_cache"] = cache_entries if setup.ctx.feature_cache else None  # entries read (hit) or written
    print_summary(setup, ev, record)
    record = write_outputs(setup, fitted, ev, record, logger)
    if record["checkpoint"]:
        print(f"checkpoint: {record['checkpoint']}")
    print(f"result: {out_path}")
    return record
