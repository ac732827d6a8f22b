"""The run: data -> method.fit -> method.predict -> evaluator -> one JSON record. Wired by Hydra in __main__."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .api import Prediction, RunContext
from .calibration import calibrate, calibration_loader, check_options, check_scores, split_holdout, threshold_rates
from .checkpoint import write_checkpoint
from .data.errors import ConfigError
from .data.mvtec import MVTecDataModule
from .data.synthetic import SyntheticDataModule
from .evaluate import compute_metrics, metric_curves
from .registry import get_method, list_methods
from .results import clean_metrics, config_hash, git_commit, package_versions, run_path, write_json_atomic
from .trainlog import check_logger, record_log, tensorboard_dir, write_tensorboard
from .utils import ensure_writable_dir, peak_rss_mb, resolve_device, seed_everything

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
                                   n_per_defect=g.n_per_defect, synth_size=g.size)
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
    """The end-of-run table: one metric per line."""
    width = max(len(k) for k in metrics) if metrics else 10
    lines = [title, "-" * max(len(title), width + 10)]
    for k, v in metrics.items():
        lines.append(f"{k:<{width}}  " + ("–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"))
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """One run of ``cfg.method`` on ``cfg.dataset`` / ``cfg.category``; returns the record it writes."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    method_name = str(cfg.method.name)
    if method_name not in list_methods():
        raise ConfigError(f"unknown method={method_name!r}; registered: {', '.join(list_methods())}")
    results_dir = ensure_writable_dir(str(cfg.results_dir), "results_dir")
    out_path = run_path(results_dir, resolved)
    logger = check_logger(cfg.get("logger", "none"))
    if resume_enabled(cfg.get("resume", False)) and out_path.is_file():
        try:
            rec = json.loads(out_path.read_text())
        except (OSError, json.JSONDecodeError):
            rec = {}
        wanted = [k for k, asked in (("overlays", cfg.get("save_maps")), ("checkpoint", cfg.get("save_model")),
                                     ("tensorboard", logger == "tensorboard")) if asked]
        missing = [k for k in wanted if not rec.get(k)]
        if rec.get("status") == "ok" and missing:
            log.info("resume: %s has no %s, which this run asks for: running it again", out_path, " / ".join(missing))
        elif rec.get("status") == "ok":
            log.info("resume: result exists, skipping %s", out_path)
            print(f"skipped (resume: result exists): {out_path}")
            return {**rec, "skipped": True, "path": str(out_path)}

    device = resolve_device(cfg.get("device", "auto"))
    seed_everything(int(cfg.seed))
    cal = cfg.get("calibration") or {}
    holdout, quantile = float(cal.get("holdout", 0.0)), float(cal.get("quantile", 0.99))
    check_options(holdout, quantile)
    dm = build_datamodule(cfg).setup()  # every data error surfaces here, before model work
    # normal training images held out to calibrate the decision threshold (never the test labels)
    dm.train_samples, calib_samples = split_holdout(dm.train_samples, holdout, int(cfg.seed))
    has_masks = bool(getattr(dm, "has_masks", True))
    if not has_masks:
        print("no masks (dataset.mask_dir not set): image metrics only; pixel_auroc and aupro are not computed")
    work_dir = results_dir / "checkpoints" / out_path.relative_to(results_dir / "runs").with_suffix("")
    ctx = RunContext(device=device, seed=int(cfg.seed), category=str(cfg.category), is_texture=dm.is_texture,
                     grayscale=dm.grayscale, image_size=dm.out_size, work_dir=work_dir,
                     progress=bool(cfg.get("progress", True)),
                     feature_cache=Path(cfg.feature_cache) if cfg.get("feature_cache") else None,
                     data_id=json.dumps([str(cfg.dataset.name), str(Path(str(cfg.dataset.root)).resolve()),
                                         str(cfg.category), dm.image_size, dm.crop_size]))
    method = get_method(method_name)(cfg.method, ctx)

    t0 = time.perf_counter()
    method.fit(dm.train_dataloader())
    fit_s = time.perf_counter() - t0
    calibration = None
    if calib_samples:
        loader = calibration_loader(calib_samples, dm.image_size, dm.crop_size, dm.batch_size)
        calibration = calibrate(method, loader, quantile, holdout, method_name)
    t1 = time.perf_counter()
    t_cal = t1 - t0 - fit_s
    pred: Prediction = method.predict(dm.test_dataloader())
    t2 = time.perf_counter()
    check_scores(pred, method_name, [s.path for s in dm.test_samples], "the test images")
    labels, masks, defect_types = dm.test_targets()
    if pred.anomaly_maps.shape != masks.shape:
        raise RuntimeError(f"method {method_name} returned maps of shape {pred.anomaly_maps.shape}, masks are {masks.shape}")
    metrics = compute_metrics(pred.image_scores, pred.anomaly_maps, labels, masks if has_masks else None, defect_types)
    t3 = time.perf_counter()
    metrics, bad = clean_metrics(metrics)
    if bad:
        log.warning("metrics without a value (one class only?): %s", ", ".join(bad))
    # a method may offer other score maps of the same fitted model (e.g. a baseline), evaluated alike
    extra_metrics = {}
    for key, extra in (getattr(method, "extra_predictions", None) or {}).items():
        check_scores(extra, f"{method_name} ({key})", [s.path for s in dm.test_samples], "the test images")
        extra_metrics[key] = clean_metrics(compute_metrics(extra.image_scores, extra.anomaly_maps, labels,
                                                           masks if has_masks else None, defect_types))[0]

    calibration_record = None
    if calibration is not None:
        calibration_record = {**calibration.to_dict(), **threshold_rates(calibration.threshold, pred.image_scores, labels)}
    if cfg.get("save_model", False):
        write_checkpoint(work_dir, method, cfg, ctx, calibration)
    overlays: list[str] = []
    if cfg.get("save_maps", False):
        from .viz import save_overlays

        maps_dir = results_dir / "maps" / out_path.relative_to(results_dir / "runs").with_suffix("")
        overlays = [str(p) for p in save_overlays(dm.test_dataset(with_labels=True), pred, labels, maps_dir)]

    tb_dir = None
    if logger == "tensorboard":  # event files: train_log per step, final metrics, config as hyper-parameters
        tb_dir = str(write_tensorboard(tensorboard_dir(results_dir, out_path), getattr(method, "train_log", None) or [],
                                       metrics, resolved))
    record = {
        "status": "ok",
        "metrics": metrics,
        "extra_metrics": extra_metrics,
        "config": resolved,
        "config_hash": config_hash(resolved),
        "fit_s": round(fit_s, 3),
        "predict_s": round(t2 - t1, 3),
        "evaluate_s": round(t3 - t2, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "method_timings": {k: round(v, 3) for k, v in getattr(method, "timings", {}).items()},
        "per_image": {  # for ROC curves and galleries
            "score": [float(v) for v in pred.image_scores], "label": labels.tolist(), "defect_type": defect_types,
            "file": [f"{s.defect_type}/{s.path.name}" for s in dm.test_samples],
        },
        "overlays": overlays,
        "curves": metric_curves(pred.anomaly_maps, masks) if has_masks else {},  # pixel ROC and PRO, down-sampled
        "train_log": record_log(method),  # the method's training curve, at most 300 points per stage
        "tensorboard": tb_dir,
        "n_train": len(dm.train_samples),
        "n_calibration": len(calib_samples),
        "calibrate_s": round(t_cal, 3),
        "calibration": calibration_record,
        "pixel_metrics": has_masks,
        "checkpoint": str(work_dir) if cfg.get("save_model", False) else None,
        "n_test": len(dm.test_samples),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(out_path, record)
    record["path"] = str(out_path)
    title = f"{method_name} on {cfg.dataset.name}/{cfg.category} (seed {cfg.seed})"
    if not has_masks:
        title += ": image metrics only (no masks)"
    print(format_metrics(metrics, title))
    for key, em in extra_metrics.items():
        print(format_metrics({k: v for k, v in em.items() if not k.startswith("auroc_")}, f"  {key} (same model)"))
    print(f"fit {record['fit_s']:.1f}s  predict {record['predict_s']:.1f}s  evaluate {record['evaluate_s']:.1f}s  "
          f"peak RSS {record['peak_rss_mb']:.0f} MiB")
    if calibration_record is not None:
        c = calibration_record
        rates = "" if c["test_fpr"] is None or c["test_tpr"] is None else \
            f": on the test images FPR {c['test_fpr']:.3f}, TPR {c['test_tpr']:.3f}"
        print(f"threshold {c['threshold']:.6g} (quantile {c['quantile']} of {c['n_images']} held-out normal images){rates}")
    if record["checkpoint"]:
        print(f"checkpoint: {record['checkpoint']}")
    print(f"result: {out_path}")
    return record
