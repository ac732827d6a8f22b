"""`make bench`: PatchCore performance figures (a script that prints a table, not a timed test).

Each case runs in its own process, so its peak RSS is its own:

* ``ours``: PatchCore (MobileNetV2 ImageNet, 224 crop, 10 % coreset, image score reweighted over 9 neighbours as
  anomalib does) on real MVTec AD bottle and on synthetic training sets of growing size; times feature
  extraction (and the backbone's share), coreset selection, index build, kNN search, anomaly-map
  post-processing and evaluation; images/s, selections/s, peak RSS, metrics.
* ``coreset``: on the real bottle features, the plain greedy's time per selection beside its memory-bandwidth
  bound (one read of the projected bank per selection, at the bandwidth measured in the same process), the
  accelerated selection's time, and a check that both select the same points.
* ``deploy``: per real category and embedding width (``preset=cpu``'s 128 and the paper's 1024), prediction
  latency per image at batch 1 (median, p95) and throughput at batch 16 with the exact index, in torch and as the
  exported ONNX graph in ONNX Runtime (with the largest relative difference of their scores and maps), then for each
  nearest-neighbour index (``flat``, ``hnsw``, ``ivf``) the kNN search time over the test set and the AUROCs.
  ``--deploy-only`` runs just these and keeps the other sections of an existing ``bench.json``.
* ``peer`` (``--peer anomalib``): anomalib's PatchCore on the same tensors, run by ``benchmarks/anomalib_patchcore.py``
  with the Python of a throwaway virtual environment (``--peer-python``), evaluated by adbench's evaluator.

Writes ``results/bench.json`` (and per-case files under ``results/bench/``) and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------------
# cases (run in a child process: `python -m adbench.bench --case JSON`)

def _method_cfg(case: dict) -> Any:
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.load(REPO / "conf" / "method" / "patchcore.yaml")
    cfg = OmegaConf.merge(cfg, OmegaConf.load(REPO / "conf" / "method_preset" / "patchcore_cpu.yaml").method)  # preset=cpu
    with open_dict(cfg):
        if case.get("embed_dim"):  # e.g. 1024: the paper's widths (WRN-50-sized features)
            cfg.layer_dim = cfg.embed_dim = int(case["embed_dim"])
        cfg.backbone.weights = case.get("weights", "imagenet")
        cfg.coreset.ratio = float(case["ratio"])
        cfg.coreset.algorithm = case.get("algorithm", "auto")
        cfg.reweight = bool(case.get("reweight", True))
        cfg.reweight_neighbours = int(case.get("neighbours", 9))
        cfg.num_nn = 1
        cfg.bank_dtype = case.get("bank_dtype", "float32")
        cfg.bank_storage = case.get("bank_storage", "memory")
    return cfg


def _datamodule(case: dict):
    from adbench.data.mvtec import MVTecDataModule
    from adbench.data.synthetic import SyntheticDataModule

    common = dict(root=case["root"], category=case["category"], image_size=256, crop_size=224, batch_size=32,
                  num_workers=2)
    if case["dataset"] == "synthetic":
        return SyntheticDataModule(**common, generator_seed=0, n_train=case["n_train"], n_test_good=20,
                                   n_per_defect=10, synth_size=256).setup()
    return MVTecDataModule(**common).setup()


def measure_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: the best of ``repeats`` threaded sums over a ``gib`` GiB float32 array."""
    import torch

    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def run_ours(case: dict) -> dict:
    """Fit, predict and evaluate PatchCore with separate timings."""
    import torch

    from adbench.api import RunContext
    from adbench.evaluate import compute_metrics
    from adbench.utils import peak_rss_mb, seed_everything
    from methods.patchcore.method import PatchCore

    seed_everything(0)
    dm = _datamodule(case)
    ctx = RunContext(device=torch.device("cpu"), seed=0, category=case["category"], progress=False)
    method = PatchCore(_method_cfg(case), ctx)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    method.fit(dm.train_dataloader())
    t1 = time.perf_counter()
    pred = method.predict(dm.test_dataloader())
    t2 = time.perf_counter()
    labels, masks, defects = dm.test_targets()
    metrics = compute_metrics(pred.image_scores, pred.anomaly_maps, labels, masks, defects)
    t3 = time.perf_counter()
    tm = method.timings
    n_train = len(dm.train_samples)
    return {
        "tool": "adbench", "dataset": case["dataset"], "n_train": n_train, "n_test": len(dm.test_samples),
        "n_patches": int(tm["n_patches"]), "n_selected": int(tm["n_selected"]),
        "fit_s": t1 - t0, "predict_s": t2 - t1, "evaluate_s": t3 - t2, "total_s": t2 - t0,
        "extract_s": tm["extract_s"], "backbone_train_s": tm["backbone_s"], "coreset_s": tm["coreset_s"],
        "index_s": tm["index_s"], "search_s": tm["search_s"], "postprocess_s": tm["postprocess_s"],
        "predict_embed_s": tm["predict_embed_s"], "backbone_s": method._backbone_s,
        "images_per_s": n_train / tm["extract_s"], "selections_per_s": tm["n_selected"] / tm["coreset_s"],
        "coreset_stats": method.coreset_stats, "peak_rss_mb": peak_rss_mb(),
        "metrics": {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro")},
        "bank_dtype": case.get("bank_dtype", "float32"), "bank_storage": case.get("bank_storage", "memory"),
        "ratio": case["ratio"], "embed_dim": int(method.cfg.embed_dim), "embed_batch": int(method.cfg.embed_batch),
        "threads": torch.get_num_threads(), "load_avg": [load0, os.getloadavg()[0]],
    }


def run_coreset(case: dict) -> dict:
    """Plain greedy per-selection time vs the bandwidth bound; accelerated time; same indices."""
    import numpy as np
    import torch

    from adbench.api import RunContext
    from adbench.utils import peak_rss_mb
    from methods.patchcore.coreset import select_coreset
    from methods.patchcore.method import PatchCore

    dm = _datamodule(case)
    method = PatchCore(_method_cfg(case), RunContext(device=torch.device("cpu"), progress=False))
    feats, proj = method._stream_train(dm.train_dataloader())  # proj None: the features are the coreset's input
    bank = np.ascontiguousarray((feats if proj is None else proj).float().numpy())
    del feats, proj
    n_select = int(round(len(bank) * float(case["ratio"])))
    bandwidth = measure_bandwidth()
    steps = min(int(case.get("plain_steps", 300)), n_select)
    t = time.perf_counter()
    plain = select_coreset(bank, steps, show_progress=False, algorithm="plain")
    plain_s = time.perf_counter() - t
    stats: dict = {}
    t = time.perf_counter()
    fast = select_coreset(bank, n_select, show_progress=False, algorithm="accelerated", stats=stats)
    fast_s = time.perf_counter() - t
    out = {
        "n_points": len(bank), "dim": bank.shape[1], "bank_mb": bank.nbytes / 2**20, "n_select": n_select,
        "bandwidth_gb_s": bandwidth, "bound_ms_per_selection": bank.nbytes / bandwidth / 1e6,
        "plain_steps": steps, "plain_ms_per_selection": plain_s / steps * 1e3,
        "plain_projected_full_s": plain_s / steps * n_select,
        "accelerated_s": fast_s, "accelerated_ms_per_selection": fast_s / n_select * 1e3,
        "accelerated_full_passes": stats.get("full_passes"), "same_prefix": bool(np.array_equal(plain, fast[:steps])),
        "peak_rss_mb": peak_rss_mb(), "load_avg": os.getloadavg()[0],
    }
    if case.get("full_plain"):
        t = time.perf_counter()
        full = select_coreset(bank, n_select, show_progress=False, algorithm="plain")
        out.update(plain_full_s=time.perf_counter() - t, same_indices=bool(np.array_equal(full, fast)))
    return out


class _Images:
    """Preloaded test images as a map-style dataset of ``{"image": [3, H, W]}`` (no decoding in the timings)."""

    def __init__(self, images: list) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def run_deploy(case: dict) -> dict:
    """Fit once (exact index); latency at batch 1 and throughput at batch 16; then each kNN index on the test set
    (test features cached, so only the search and the post-processing are repeated)."""
    import shutil
    import tempfile

    import torch
    from torch.utils.data import DataLoader

    from adbench.api import RunContext
    from adbench.cache import data_id
    from adbench.evaluate import compute_metrics
    from adbench.utils import seed_everything
    from methods.patchcore.knn import KnnSpec
    from methods.patchcore.method import PatchCore

    seed_everything(0)
    dm = _datamodule(case)
    cache = case.get("feature_cache") or tempfile.mkdtemp(prefix="adbench-bench-cache-")
    # the harness's cache key for this data, so that features cached by `make table1` are reused
    cached = RunContext(device=torch.device("cpu"), seed=0, category=case["category"], progress=False,
                        feature_cache=Path(cache),
                        data_id=data_id(case["dataset"], case["root"], case["category"], dm.image_size, dm.crop_size,
                                        files=[s.path for s in (*dm.train_samples, *dm.test_samples)]))
    ctx = cached if case.get("feature_cache") else RunContext(device=torch.device("cpu"), seed=0,
                                                               category=case["category"], progress=False)
    cfg = _method_cfg(dict(case, reweight=False))
    method = PatchCore(cfg, ctx)
    t = time.perf_counter()
    method.fit(dm.train_dataloader())
    fit_s = time.perf_counter() - t
    method.ctx = RunContext(device=torch.device("cpu"), seed=0, category=case["category"], progress=False)
    test = dm.test_dataloader()
    n_lat, n_thr = int(case.get("latency_images", 20)), int(case.get("throughput_batches", 2))
    images = [test.dataset[i]["image"] for i in range(min(len(test.dataset), max(n_lat, 16 * n_thr)))]
    for x in images[:2 if n_lat else 0]:  # warm-up
        method.predict(_OneBatch({"image": x[None]}))
    lat, ref = [], []
    for x in images[:n_lat]:  # batch 1: every image through the backbone, search and post-processing
        batch = {"image": x[None]}
        t = time.perf_counter()
        ref.append(method.predict(_OneBatch(batch)))
        lat.append(time.perf_counter() - t)
    thr = None
    if n_thr:
        t = time.perf_counter()
        method.predict(DataLoader(_Images(images[: 16 * n_thr]), batch_size=16))
        thr = 16 * n_thr / (time.perf_counter() - t)
    ort = run_onnx(method, images, ref, n_thr) if n_lat and case.get("onnx", True) else None
    # the index comparison: test features extracted once (cached), search and post-processing per index
    method.ctx = cached
    labels, masks, defects = dm.test_targets()
    bank = method.bank.clone()
    indexes = []
    for spec in [KnnSpec(), KnnSpec(index="hnsw"), KnnSpec(index="ivf")]:
        method.knn = spec
        t = time.perf_counter()
        method._build_index(bank.clone())
        build_s = time.perf_counter() - t
        pred = method.predict(test)
        m = compute_metrics(pred.image_scores, pred.anomaly_maps, labels, masks, defects)
        indexes.append({"index": spec.index, "params": {k: v for k, v in spec.__dict__.items() if k != "index"},
                        "build_s": build_s, "search_s": method.timings["search_s"],
                        "rescored_patches": method.timings["rescored_patches"],
                        "n_queries": len(labels) * method.grid[0] * method.grid[1],
                        "metrics": {k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")}})
    if not case.get("feature_cache"):
        shutil.rmtree(cache, ignore_errors=True)
    return {"category": case["category"], "embed_dim": int(cfg.embed_dim), "bank_rows": len(bank), "fit_s": fit_s,
            "n_test": len(labels), "latency_images": len(lat),
            "latency_median_ms": 1e3 * _percentile(lat, 50) if lat else None,
            "latency_p95_ms": 1e3 * _percentile(lat, 95) if lat else None, "throughput_batch": 16, "throughput_img_s": thr,
            "indexes": indexes, "threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0], "onnx": ort}


def _max_rel(got, ref) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    import numpy as np

    return float(np.abs(np.asarray(got) - np.asarray(ref)).max() / max(float(np.abs(ref).max()), 1e-12))


def run_onnx(method: Any, images: list, ref: list, n_thr: int) -> dict:
    """The fitted PatchCore exported to ONNX and run by ONNX Runtime (CPU, torch's thread count): latency at
    batch 1 on the images torch timed (``ref``: torch's predictions of them), throughput at batch 16, and the
    largest relative difference of scores and maps from torch's."""
    import tempfile

    import numpy as np
    import torch

    from adbench.export import export_module, trace_onnx
    from adbench.onnx_runtime import OrtModel

    method.ctx.image_size = tuple(int(v) for v in images[0].shape[-2:])
    with tempfile.TemporaryDirectory(prefix="adbench-bench-onnx-") as tmp:
        path = Path(tmp) / "patchcore.onnx"
        t = time.perf_counter()
        trace_onnx(export_module(method, "patchcore"), method.ctx.image_size, path)
        export_s = time.perf_counter() - t
        session = OrtModel(path, threads=torch.get_num_threads())
        one = [x[None].numpy() for x in images[: len(ref)]]
        for x in one[:2]:  # warm-up
            session.run(x)
        lat, got = [], []
        for x in one:
            t = time.perf_counter()
            got.append(session.run(x))
            lat.append(time.perf_counter() - t)
        thr = None
        if n_thr:
            batches = [torch.stack(images[i : i + 16]).numpy() for i in range(0, 16 * n_thr, 16)]
            t = time.perf_counter()
            for b in batches:
                session.run(b)
            thr = 16 * n_thr / (time.perf_counter() - t)
        size_mb = path.stat().st_size / 1e6
    scores = [abs(float(g[0][0]) - float(r.image_scores[0])) / abs(float(r.image_scores[0])) for g, r in zip(got, ref)]
    return {"engine": "onnxruntime", "latency_median_ms": 1e3 * _percentile(lat, 50),
            "latency_p95_ms": 1e3 * _percentile(lat, 95), "throughput_img_s": thr, "export_s": export_s,
            "onnx_mb": size_mb, "max_rel_score": max(scores),
            "max_rel_map": max(_max_rel(g[1][0], r.anomaly_maps[0]) for g, r in zip(got, ref)),
            "threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0]}


class _OneBatch:
    """A loader of one ready batch (what a deployed model is handed), with no dataset to hash for a cache."""

    def __init__(self, batch: dict) -> None:
        self.batch, self.dataset = batch, None

    def __iter__(self):
        return iter([self.batch])


CASES = {"ours": run_ours, "coreset": run_coreset, "deploy": run_deploy}


# ---------------------------------------------------------------------------------------------------------------
# driver

def _child(case: dict, log: Path) -> dict:
    """Run one case in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "adbench.bench", "--case", json.dumps(case)]
    env = dict(os.environ, ADBENCH_PROGRESS="0")
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=fh, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench case {case} failed (exit {proc.returncode}); see {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peer(args: argparse.Namespace, case: dict, out_dir: Path) -> dict:
    """anomalib's PatchCore in its own environment, evaluated here with adbench's evaluator."""
    import numpy as np

    from adbench.evaluate import compute_metrics

    name = f"anomalib-{case['dataset']}-{case['category']}" + (f"-{case['n_train']}" if case["dataset"] == "synthetic" else "")
    npz = out_dir / f"{name}.npz"
    if not (args.reuse and npz.is_file() and npz.with_suffix(".json").is_file()):
        cmd = [args.peer_python, str(REPO / "benchmarks" / "anomalib_patchcore.py"), "--root", case["root"],
               "--category", case["category"], "--dataset", case["dataset"], "--ratio", str(case["ratio"]),
               "--neighbours", "9", "--out", str(npz)]
        if case["dataset"] == "synthetic":
            cmd += ["--n-train", str(case["n_train"])]
        if os.environ.get("TORCH_HOME"):
            cmd += ["--torch-home", os.environ["TORCH_HOME"]]
        with open(out_dir / f"{name}.log", "w") as fh:
            proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            return {"tool": "anomalib", "error": f"exit {proc.returncode}, see {out_dir / (name + '.log')}"}
    info = json.loads(npz.with_suffix(".json").read_text())
    pred = np.load(npz)
    dm = _datamodule(case)
    labels, masks, defects = dm.test_targets()
    t = time.perf_counter()
    m = compute_metrics(pred["image_scores"], pred["anomaly_maps"], labels, masks, defects)
    info.update(evaluate_s=time.perf_counter() - t, metrics={k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")},
                dataset=case["dataset"])
    return info


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def print_tables(result: dict) -> None:
    if result.get("deploy"):
        print_deploy(result["deploy"])
    rows = result.get("runs", [])
    if not rows:
        return
    print(f"\nPatchCore benchmark ({result['machine']['cpus']} CPUs, torch threads {result['machine']['threads']}, "
          f"read bandwidth {result['machine']['bandwidth_gb_s']:.1f} GB/s)")
    head = (f"{'run':<34}{'train':>6}{'patches':>9}{'extract s':>10}{'img/s':>7}{'bb %':>6}{'coreset s':>10}"
            f"{'sel/s':>8}{'index s':>8}{'kNN s':>7}{'post s':>7}{'eval s':>7}{'fit+pred s':>11}{'RSS MB':>8}"
            f"{'img AUC':>8}{'pix AUC':>8}{'AUPRO':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        m = r.get("metrics", {})
        share = 100 * r["backbone_s"] / r["total_s"] if r.get("backbone_s") else None
        print(f"{r['label']:<34}{r.get('n_train', 0):>6}{_fmt(r.get('n_patches'), 'd'):>9}{_fmt(r.get('extract_s')):>10}"
              f"{_fmt(r.get('images_per_s')):>7}{_fmt(share, '.0f'):>6}{_fmt(r.get('coreset_s')):>10}"
              f"{_fmt(r.get('selections_per_s'), '.0f'):>8}{_fmt(r.get('index_s'), '.2f'):>8}{_fmt(r.get('search_s')):>7}"
              f"{_fmt(r.get('postprocess_s')):>7}{_fmt(r.get('evaluate_s')):>7}{_fmt(r.get('total_s')):>11}"
              f"{_fmt(r.get('peak_rss_mb'), '.0f'):>8}{_fmt(m.get('image_auroc'), '.3f'):>8}"
              f"{_fmt(m.get('pixel_auroc'), '.3f'):>8}{_fmt(m.get('aupro'), '.3f'):>7}")
    c = result.get("coreset")
    if c:
        print(f"\ncoreset on {c['n_points']} x {c['dim']} projected bottle features ({c['bank_mb']:.0f} MB), "
              f"{c['n_select']} selections:")
        print(f"  plain:       {c['plain_ms_per_selection']:.2f} ms/selection   bandwidth bound "
              f"{c['bound_ms_per_selection']:.2f} ms/selection ({c['bandwidth_gb_s']:.1f} GB/s)   ratio "
              f"{c['plain_ms_per_selection'] / c['bound_ms_per_selection']:.2f}x   (full run ~{c['plain_projected_full_s']:.0f} s)")
        print(f"  accelerated: {c['accelerated_ms_per_selection']:.2f} ms/selection ({c['accelerated_s']:.1f} s), "
              f"{c['accelerated_full_passes']:.0f} bank passes instead of {c['n_select']}; same points as plain: "
              f"{c.get('same_indices', c['same_prefix'])}")
    for cmp_ in result.get("comparisons", []):
        print(f"\n{cmp_['ours']} (embedding width {cmp_['embed_dim']}) vs anomalib {cmp_['anomalib_version']} PatchCore "
              f"(same tensors, same layers, 10 % coreset, 9 neighbours): wall time {cmp_['time_ratio']:.3f}x, peak RSS "
              f"{cmp_['rss_ratio']:.2f}x; image AUROC {cmp_['ours_image_auroc']:.3f} vs {cmp_['peer_image_auroc']:.3f}, "
              f"pixel AUROC {cmp_['ours_pixel_auroc']:.3f} vs {cmp_['peer_pixel_auroc']:.3f}")


def print_deploy(deploy: dict) -> None:
    """Latency / throughput per case (torch, and ONNX Runtime when measured) and the kNN-index trade-off."""
    cases = deploy["cases"]
    print("\nprediction on CPU (PatchCore preset=cpu; exact index; torch and the exported ONNX graph in ONNX Runtime)")
    head = (f"{'case':<32}{'width':>6}{'bank':>7}{'engine':>13}{'batch 1 median ms':>19}{'p95 ms':>8}"
            f"{'batch 16 img/s':>16}{'max rel diff score / map':>26}")
    print(head)
    print("-" * len(head))
    for c in cases:
        if c.get("latency_median_ms") is None:
            continue
        rows = [("torch", c, None)] + ([("onnxruntime", c["onnx"], c["onnx"])] if c.get("onnx") else [])
        for engine, r, o in rows:
            diff = "" if o is None else f"{o['max_rel_score']:.1e} / {o['max_rel_map']:.1e}"
            print(f"{c['label']:<32}{c['embed_dim']:>6}{c['bank_rows']:>7}{engine:>13}{r['latency_median_ms']:>19.0f}"
                  f"{r['latency_p95_ms']:>8.0f}{_fmt(r['throughput_img_s'], '.2f'):>16}{diff:>26}")
    print("\nnearest-neighbour index vs exact (flat), whole test set")
    head = (f"{'case':<28}{'index':>6}{'search s':>10}{'speed-up':>9}{'img AUC':>9}{'d img':>8}{'pix AUC':>9}"
            f"{'d pix':>8}{'AUPRO':>7}")
    print(head)
    print("-" * len(head))
    for c in cases:
        flat = c["indexes"][0]
        for ix in c["indexes"]:
            m, f = ix["metrics"], flat["metrics"]
            print(f"{c['label']:<28}{ix['index']:>6}{ix['search_s']:>10.2f}{flat['search_s'] / ix['search_s']:>8.1f}x"
                  f"{m['image_auroc']:>9.3f}{m['image_auroc'] - f['image_auroc']:>+8.3f}{m['pixel_auroc']:>9.4f}"
                  f"{m['pixel_auroc'] - f['pixel_auroc']:>+8.4f}{m['aupro']:>7.3f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m adbench.bench", description="PatchCore performance benchmark")
    ap.add_argument("--data", default=os.environ.get("ADBENCH_MVTEC_ROOT", str(REPO.parent / "shared" / "data" / "mvtec_ad")))
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--sizes", default="200,1000,3000", help="synthetic training-set sizes ('' to skip)")
    ap.add_argument("--synthetic-root", default="/tmp/adbench-bench-synthetic")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--large-ratio", type=float, default=0.01,
                    help="coreset ratio for synthetic sizes >= 2000 (default 0.01: the memory scaling point without "
                         "hours of selection; 0: --ratio everywhere)")
    ap.add_argument("--paper-dim", type=int, default=1024,
                    help="embedding width of the second bottle run and of the synthetic runs (the paper's WRN-50 width; "
                         "0: only preset=cpu's width)")
    ap.add_argument("--bank-dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--bank-storage", default="memory", choices=["memory", "disk"])
    ap.add_argument("--peer", default="none", choices=["none", "anomalib"])
    ap.add_argument("--peer-python", default="/tmp/anomalib-venv/bin/python")
    ap.add_argument("--plain-steps", type=int, default=300)
    ap.add_argument("--full-plain", action="store_true", help="also run the whole plain coreset on bottle")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse per-case results already in results/bench/")
    ap.add_argument("--deploy-categories", default="bottle,transistor",
                    help="real categories of the latency / kNN-index cases ('' to skip them)")
    ap.add_argument("--latency-categories", default=None,
                    help="deploy categories that also get the batch-1 latency / batch-16 throughput (torch and ONNX "
                         "Runtime); default: all of --deploy-categories")
    ap.add_argument("--no-onnx", action="store_true",
                    help="deploy cases: skip the exported ONNX graph's latency in ONNX Runtime")
    ap.add_argument("--feature-cache", default=None,
                    help="deploy cases: read/write backbone features here (e.g. results/cache, filled by make table1)")
    ap.add_argument("--deploy-only", action="store_true",
                    help="run only the latency / kNN-index cases; keep the other sections of an existing --out file")
    ap.add_argument("--out", default="results/bench.json")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(CASES[case["kind"]](case)))
        return

    import torch

    out = Path(args.out)
    case_dir = out.parent / "bench"
    case_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "bandwidth_gb_s": measure_bandwidth(),
                    "torch": torch.__version__, "load_avg_start": os.getloadavg()[0]},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": [],
    }

    def case_run(case: dict, label: str) -> dict:
        slug = label.replace("/", "-").replace(" ", "_").replace("=", "")
        path = case_dir / f"{slug}.json"
        if args.reuse and path.is_file():
            r = json.loads(path.read_text())
        else:
            print(f"[bench] {label} ...", file=sys.stderr, flush=True)
            r = _child(case, case_dir / f"{slug}.log")
            path.write_text(json.dumps(r, indent=1))
        r["label"] = label
        return r

    real = dict(dataset="mvtec", root=args.data, category=args.category, ratio=args.ratio, bank_dtype=args.bank_dtype,
                bank_storage=args.bank_storage)
    this_pass = {"started": result["started"], "machine": result["machine"]}
    if args.deploy_only:
        if out.is_file():  # keep the sections (and their machine record) this pass does not rerun
            result = json.loads(out.read_text())
        args.skip_real, args.sizes = True, ""
    deploy = []
    latency = {c.strip() for c in (args.latency_categories or args.deploy_categories).split(",")}
    for dim in [0, args.paper_dim] if args.paper_dim else [0]:  # preset=cpu's width first
        for category in [c for c in args.deploy_categories.split(",") if c.strip()]:
            case = dict(real, kind="deploy", category=category, embed_dim=dim, feature_cache=args.feature_cache,
                        onnx=not args.no_onnx)
            if category not in latency:  # latency on --latency-categories only; the index trade-off everywhere
                case.update(latency_images=0, throughput_batches=0)
            deploy.append(case_run(case, f"deploy mvtec/{category}" + (f" d={dim}" if dim else "")))
    if deploy:
        result["deploy"] = dict(this_pass, cases=deploy)
    if not args.skip_real:
        result["runs"].append(case_run(dict(real, kind="ours"), f"ours mvtec/{args.category}"))
        if args.paper_dim:
            result["runs"].append(case_run(dict(real, kind="ours", embed_dim=args.paper_dim),
                                           f"ours mvtec/{args.category} d={args.paper_dim}"))
        result["coreset"] = case_run(dict(real, kind="coreset", plain_steps=args.plain_steps,
                                          full_plain=args.full_plain), f"coreset mvtec/{args.category}")
        if args.peer == "anomalib":
            peer = _peer(args, real, case_dir)
            peer["label"] = f"anomalib mvtec/{args.category}"
            result["runs"].append(peer)
            if "error" not in peer:
                result["comparisons"] = [{
                    "ours": ours["label"], "embed_dim": ours.get("embed_dim"), "anomalib_version": peer["anomalib_version"],
                    "time_ratio": ours["total_s"] / peer["total_s"], "rss_ratio": ours["peak_rss_mb"] / peer["peak_rss_mb"],
                    "ours_image_auroc": ours["metrics"]["image_auroc"], "peer_image_auroc": peer["metrics"]["image_auroc"],
                    "ours_pixel_auroc": ours["metrics"]["pixel_auroc"], "peer_pixel_auroc": peer["metrics"]["pixel_auroc"],
                } for ours in result["runs"] if ours.get("tool") == "adbench"]
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        ratio = args.large_ratio if (args.large_ratio and size >= 2000) else args.ratio
        case = dict(kind="ours", dataset="synthetic", root=args.synthetic_root, category="washer", n_train=size,
                    ratio=ratio, bank_dtype=args.bank_dtype, bank_storage=args.bank_storage, embed_dim=args.paper_dim)
        label = f"ours synthetic/{size}" + (f" d={args.paper_dim}" if args.paper_dim else "")
        result["runs"].append(case_run(case, label + (f" r={ratio}" if ratio != args.ratio else "")))
    section = result["deploy"] if args.deploy_only and deploy else result
    section["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    section["machine"]["load_avg_end"] = os.getloadavg()[0]
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)  # atomic: an interrupted run leaves the previous file
    print_tables(result)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
