"""The run: data -> method.fit -> method.predict -> evaluator -> one JSON record. Wired by Hydra in __main__."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .api import Prediction, RunContext
from .data.errors import ConfigError
from .data.mvtec import MVTecDataModule
from .data.synthetic import SyntheticDataModule
from .evaluate import compute_metrics
from .registry import get_method, list_methods
from .results import clean_metrics, config_hash, git_commit, package_versions, run_path, write_json_atomic
from .utils import peak_rss_mb, resolve_device, seed_everything

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
    builder = DATAMODULES.get(str(d.name))
    if builder is None:
        raise ConfigError(f"unknown dataset.name={d.name!r}; known: mvtec, synthetic, {', '.join(DATAMODULES)}")
    return builder(cfg)


# extra datamodule builders by dataset name (cfg -> datamodule); see adbench.data for the built-in ones
DATAMODULES: dict[str, Any] = {}


def _check_results_dir(results_dir: str) -> Path:
    p = Path(results_dir)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"results_dir={results_dir} is not writable ({err.strerror}); pass results_dir=DIR") from None
    return p


def format_metrics(metrics: dict[str, Any], title: str) -> str:
    """The end-of-run table: one metric per line."""
    width = max(len(k) for k in metrics) if metrics else 10
    lines = [title, "-" * max(len(title), width + 10)]
    for k, v in metrics.items():
        lines.append(f"{k:<{width}}  " + ("–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"))
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict[str, Any]:
    """One run of ``cfg.method`` on ``cfg.dataset`` / ``cfg.category``; returns the record it writes."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    method_name = str(cfg.method.name)
    if method_name not in list_methods():
        raise ConfigError(f"unknown method={method_name!r}; registered: {', '.join(list_methods())}")
    results_dir = _check_results_dir(str(cfg.results_dir))
    out_path = run_path(results_dir, resolved)
    if cfg.get("resume", False) and out_path.is_file():
        try:
            rec = json.loads(out_path.read_text())
        except (OSError, json.JSONDecodeError):
            rec = {}
        if rec.get("status") == "ok":
            log.info("resume: result exists, skipping %s", out_path)
            print(f"skipped (resume=true, result exists): {out_path}")
            return {**rec, "skipped": True, "path": str(out_path)}

    device = resolve_device(cfg.get("device", "auto"))
    seed_everything(int(cfg.seed))
    dm = build_datamodule(cfg).setup()  # every data error surfaces here, before model work
    work_dir = results_dir / "checkpoints" / out_path.relative_to(results_dir / "runs").with_suffix("")
    ctx = RunContext(device=device, seed=int(cfg.seed), category=str(cfg.category), is_texture=dm.is_texture,
                     grayscale=dm.grayscale, image_size=dm.out_size, work_dir=work_dir,
                     progress=bool(cfg.get("progress", True)))
    method = get_method(method_name)(cfg.method, ctx)

    t0 = time.perf_counter()
    method.fit(dm.train_dataloader())
    t1 = time.perf_counter()
    pred: Prediction = method.predict(dm.test_dataloader())
    t2 = time.perf_counter()
    labels, masks, defect_types = dm.test_targets()
    if pred.anomaly_maps.shape != masks.shape:
        raise RuntimeError(f"method {method_name} returned maps of shape {pred.anomaly_maps.shape}, masks are {masks.shape}")
    metrics = compute_metrics(pred.image_scores, pred.anomaly_maps, labels, masks, defect_types)
    t3 = time.perf_counter()
    metrics, bad = clean_metrics(metrics)
    if bad:
        log.warning("metrics without a value (one class only?): %s", ", ".join(bad))
    # a method may offer other score maps of the same fitted model (e.g. a baseline), evaluated alike
    extra_metrics = {}
    for key, extra in (getattr(method, "extra_predictions", None) or {}).items():
        extra_metrics[key] = clean_metrics(compute_metrics(extra.image_scores, extra.anomaly_maps, labels, masks,
                                                           defect_types))[0]

    if cfg.get("save_model", False):
        method.save(work_dir)
        OmegaConf.save(cfg, work_dir / "config.yaml", resolve=True)
    if cfg.get("save_maps", False):
        from .viz import save_overlays

        save_overlays(dm.test_dataset(with_labels=True), pred, labels, results_dir / "maps" / out_path.stem)

    record = {
        "status": "ok",
        "metrics": metrics,
        "extra_metrics": extra_metrics,
        "config": resolved,
        "config_hash": config_hash(resolved),
        "fit_s": round(t1 - t0, 3),
        "predict_s": round(t2 - t1, 3),
        "evaluate_s": round(t3 - t2, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "method_timings": {k: round(v, 3) for k, v in getattr(method, "timings", {}).items()},
        "n_train": len(dm.train_samples),
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
    print(format_metrics(metrics, title))
    for key, em in extra_metrics.items():
        print(format_metrics({k: v for k, v in em.items() if not k.startswith("auroc_")}, f"  {key} (same model)"))
    print(f"fit {record['fit_s']:.1f}s  predict {record['predict_s']:.1f}s  evaluate {record['evaluate_s']:.1f}s  "
          f"peak RSS {record['peak_rss_mb']:.0f} MiB")
    print(f"result: {out_path}")
    return record
