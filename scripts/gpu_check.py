"""GPU readiness check: each method's GPU path, briefly, on real images; one JSON and a timing table.

Run through ``scripts/gpu_check.sh OUTDIR`` (which installs missing dependencies from local wheels first), or
directly: ``python scripts/gpu_check.py OUTDIR [--device auto|cuda|cpu] [--size paper|tiny] [--data DIR]``.

Sections, each timed and kept going when another fails:

* ``env``: device, driver, versions, whether faiss has GPU support;
* ``patchcore``: MobileNetV2 at the paper's embedding width (1024) fitted and scored twice, backbone under
  float16 autocast and in float32 (both AUROCs); the greedy coreset on the device against the CPU kernels on the
  same projected bank (same indices?); the kNN search of the fitted index (faiss on the GPU when faiss has GPU
  support) against a plain torch search on the device (same neighbours?);
* ``cutpaste``, ``lora_mae``, ``vae_energy``: a few hundred optimiser steps at the paper's batch size (32) and
  model (ResNet-18; MAE ViT-L/7 with LoRA on a frozen encoder; the reference VAE), steps/s, peak GPU memory.

Methods are built through the registry from ``conf/method/<name>.yaml`` plus the overrides below; nothing of
their code is repeated here. ``--size tiny`` (the default on CPU) shrinks images, models and steps so the same
script runs in seconds (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PACKAGES = ("torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "pandas", "seaborn", "hydra-core",
            "omegaconf", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "loralib", "pillow")
WEIGHT_FILES = {"mobilenet_v2": "mobilenet_v2-b0353104.pth", "resnet18": "resnet18-f37072fd.pth"}

# per size: data subset, PatchCore width, training steps and the per-method overrides
SIZES: dict[str, dict[str, Any]] = {
    "paper": {
        "image_size": 256, "crop_size": 224, "n_train": None, "n_test_each": None, "embed_dim": 1024, "steps": 200,
        "cutpaste": {"backbone": {"name": "resnet18"}, "variant": "3way", "train": {"batch_size": 32}},
        "lora_mae": {"arch": "mae_vit_large_patch7", "freeze_non_lora": True, "train": {"batch_size": 32}},
        "vae_energy": {"train": {"batch_size": 32}},
    },
    "tiny": {
        "image_size": 64, "crop_size": None, "n_train": 8, "n_test_each": 3, "embed_dim": 64, "steps": 2,
        "cutpaste": {"backbone": {"name": "resnet18"}, "variant": "3way", "head_dims": [32],
                     "train": {"batch_size": 4}, "embed_batch_size": 8},
        "lora_mae": {"arch": "mae_vit_cpu_patch8", "pretrained": "none",
                     "model": {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_embed_dim": 32,
                               "decoder_depth": 1, "decoder_num_heads": 2},
                     "train": {"batch_size": 4}},
        "vae_energy": {"input_size": 32, "channels": [8, 16], "z_dim": 16, "texture": {"resize": 64, "stride": 32},
                       "train": {"batch_size": 4}},
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device, driver and library versions, and where the wheel-installed modules were imported from."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "device": str(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    env["versions"] = {k: v for k in PACKAGES if (v := _version(k))}
    import faiss
    import hydra
    import loralib
    import omegaconf

    env["faiss_gpu"] = bool(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)
    env["faiss_num_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    env["imported_from"] = {m.__name__: str(Path(m.__file__).parent) for m in (hydra, omegaconf, faiss, loralib)}
    return env


def load_data(data: str, category: str, size: dict[str, Any], workers: int, work: Path):
    """The datamodule (real MVTec-layout root, or the generated synthetic set) trimmed to the size's subset."""
    from adbench.data.mvtec import MVTecDataModule
    from adbench.data.synthetic import SyntheticDataModule

    common = dict(category=category, image_size=size["image_size"], crop_size=size["crop_size"], batch_size=32,
                  num_workers=workers)
    if data == "synthetic":
        root = work / "synthetic"
        dm = SyntheticDataModule(root=root, generator_seed=0, n_train=12, n_test_good=6, n_per_defect=2,
                                 synth_size=size["image_size"], **common)
    else:
        dm = MVTecDataModule(root=data, **common)
    dm.setup()
    if size["n_train"]:
        dm.train_samples = dm.train_samples[: size["n_train"]]
    if size["n_test_each"]:  # a few good and a few defective images, defects spread over the types
        k = size["n_test_each"]
        good = [s for s in dm.test_samples if s.label == 0]
        bad = [s for s in dm.test_samples if s.label == 1]
        dm.test_samples = good[:k] + bad[:: max(1, len(bad) // k)][:k]
    return dm


def _weights(backbone: str) -> str:
    """``imagenet`` when torchvision's file is in the torch cache (no download here), else ``none``."""
    name = WEIGHT_FILES.get(backbone)
    ok = name is not None and (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file()
    return "imagenet" if ok else "none"


def method_cfg(name: str, overrides: dict[str, Any]):
    """``conf/method/<name>.yaml`` merged with ``overrides`` (what ``method=<name> method.x=..`` composes)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.load(REPO / "conf" / "method" / f"{name}.yaml"), OmegaConf.create(overrides))


def _ctx(dm, device: torch.device, work_dir: Path):
    from adbench.api import RunContext

    return RunContext(device=device, seed=0, category=dm.category, is_texture=dm.is_texture, grayscale=dm.grayscale,
                      image_size=dm.out_size, work_dir=work_dir, progress=False)


def check_patchcore(dm, device: torch.device, size: dict[str, Any], work: Path) -> dict[str, Any]:
    """Fit + predict with autocast and in float32; device coreset vs CPU; faiss search vs torch search."""
    from adbench.evaluate import compute_metrics
    from adbench.registry import get_method
    from adbench.utils import seed_everything
    from methods.patchcore.coreset import greedy_coreset, project, select_coreset

    labels, masks, defect_types = dm.test_targets()
    weights = _weights("mobilenet_v2")
    out: dict[str, Any] = {"backbone": "mobilenet_v2", "weights": weights, "embed_dim": size["embed_dim"],
                           "n_train": len(dm.train_samples), "n_test": len(dm.test_samples), "runs": {}}
    models, scores = {}, {}
    for label, amp in (("autocast_fp16", True), ("float32", False)):
        cfg = method_cfg("patchcore", {"backbone": {"name": "mobilenet_v2", "weights": weights},
                                       "layer_dim": size["embed_dim"], "embed_dim": size["embed_dim"], "amp": amp})
        _reset_peak(device)
        seed_everything(0)  # without ImageNet weights both runs must start from the same random backbone
        m = get_method("patchcore")(cfg, _ctx(dm, device, work / f"patchcore_{label}"))
        t0 = time.perf_counter()
        m.fit(dm.train_dataloader())
        _sync(device)
        t1 = time.perf_counter()
        pred = m.predict(dm.test_dataloader())
        _sync(device)
        t2 = time.perf_counter()
        metrics = compute_metrics(pred.image_scores, pred.anomaly_maps, labels, masks, defect_types)
        out["runs"][label] = {
            "autocast_active": amp and device.type == "cuda", "fit_s": t1 - t0, "predict_s": t2 - t1,
            **{k: float(v) for k, v in m.timings.items()}, "peak_gpu_mb": _peak_mb(device),
            "image_auroc": float(metrics["image_auroc"]), "pixel_auroc": float(metrics["pixel_auroc"]),
            "index": type(m.index).__name__}
        models[label], scores[label] = m, pred.image_scores
    ref = np.abs(scores["float32"]).max() or 1.0
    out["score_max_rel_diff_autocast_vs_fp32"] = float(np.abs(scores["autocast_fp16"] - scores["float32"]).max() / ref)

    # greedy coreset: the device loop and the CPU kernels on one projected bank (projected once, on the CPU)
    m = models["float32"]
    emb, _, _ = m.embed_all(dm.train_dataloader(), "train", "features")  # [N, h*w, D] on the device
    bank = project(emb.reshape(-1, emb.shape[-1]).cpu(), int(m.cfg.coreset.projection_dim), seed=0)  # [N*h*w, 128]
    del emb
    n_select = max(1, int(len(bank) * float(m.cfg.coreset.ratio)))  # as PatchCore.fit
    start = int(m.cfg.coreset.start_points)
    t0 = time.perf_counter()
    idx_dev = greedy_coreset(bank.to(device), n_select, projection_dim=None, start_points=start, seed=0,
                             show_progress=False).cpu().numpy()
    _sync(device)
    t1 = time.perf_counter()
    idx_plain = select_coreset(bank.numpy(), n_select, start, 0, False, "plain")
    t2 = time.perf_counter()
    idx_acc = select_coreset(bank.numpy(), n_select, start, 0, False, "accelerated")
    t3 = time.perf_counter()
    diff = np.flatnonzero(idx_dev != idx_plain)
    out["coreset"] = {
        "n_points": len(bank), "n_select": n_select, "device_s": t1 - t0, "cpu_plain_s": t2 - t1,
        "cpu_accelerated_s": t3 - t2, "same_indices_device_vs_cpu": bool(len(diff) == 0),
        "first_mismatch": int(diff[0]) if len(diff) else None,
        "overlap_device_vs_cpu": len(np.intersect1d(idx_dev, idx_plain)) / n_select,
        "same_indices_accelerated_vs_plain": bool(np.array_equal(idx_acc, idx_plain))}

    # kNN search of the fitted index (faiss, on the GPU when faiss has GPU support) vs torch on the device
    batch = next(iter(dm.test_dataloader()))
    q = m.embed(batch["image"])  # [B, h*w, D]
    q = q.reshape(-1, q.shape[-1]).float()
    qn = np.ascontiguousarray(q.cpu().numpy())
    t0 = time.perf_counter()
    d2, ids = m.index.search(qn, 1)
    t1 = time.perf_counter()
    memory = m.bank.to(device)
    _sync(device)
    t2 = time.perf_counter()
    dists, tids = [], []
    for chunk in q.to(device).split(4096):
        d, i = torch.cdist(chunk, memory).min(dim=1)
        dists.append(d)
        tids.append(i)
    _sync(device)
    t3 = time.perf_counter()
    dt, it = torch.cat(dists).cpu().numpy(), torch.cat(tids).cpu().numpy()
    df = np.sqrt(np.maximum(d2[:, 0], 0))
    out["search"] = {
        "backend": "faiss-gpu" if "Gpu" in type(m.index).__name__ else "faiss-cpu", "queries": len(qn),
        "bank": len(memory), "faiss_s": t1 - t0, "torch_s": t3 - t2,
        "same_neighbour_fraction": float((ids[:, 0] == it).mean()),
        "max_abs_distance_diff": float(np.abs(df - dt).max())}
    return out


def _train_log_loss(m) -> float | None:
    log = getattr(m, "train_log", None) or []
    return float(log[-1]["loss"]) if log and "loss" in log[-1] else None


def check_training(name: str, dm, device: torch.device, size: dict[str, Any], work: Path,
                   steps: int) -> dict[str, Any]:
    """``fit`` with about ``steps`` optimiser steps at the size's batch size; steps/s and peak GPU memory."""
    from adbench.registry import get_method

    over = json.loads(json.dumps(size[name]))  # a copy
    n = len(dm.train_samples)
    bs = min(int(over["train"]["batch_size"]), n)
    extra: dict[str, Any] = {}
    if name == "cutpaste":
        over["backbone"]["weights"] = _weights(over["backbone"]["name"])
        over["train"].update(steps=steps, checkpoint_every=0, resume=False)
        over["patch"] = {"enabled": False}
        done = steps
    elif name == "lora_mae":
        per_epoch = math.ceil(n / bs)
        epochs = max(2, math.ceil(steps / per_epoch))
        over["train"].update(epochs=epochs, warmup_epochs=1, checkpoint_every=0, resume=False)
        if over.get("pretrained") != "none":  # the paper's frozen pretrained encoder; random weights of its shape
            import timm

            path = work / "random_vit_large_patch16_224.pth"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(timm.create_model("vit_large_patch16_224.mae", pretrained=False, num_classes=0).state_dict(),
                       path)
            over["pretrained"] = str(path)
            extra["pretrained"] = "random weights in vit_large_patch16_224.mae's shape (speed, not accuracy)"
        done = epochs * per_epoch
    else:  # vae_energy: batches of fewer than two images are skipped (BatchNorm)
        base = method_cfg(name, over)
        side, crop, stride = min(dm.out_size), int(base.input_size), int(base.texture.stride)
        if dm.is_texture and int(base.texture.resize) > side:  # the method never upsamples: crops of this input
            resize = crop + (side - crop) // stride * stride  # the largest size its crops tile exactly
            over.setdefault("texture", {})["resize"] = resize
            extra["texture_resize"] = f"{resize} (the check's input is {side} px; the paper resizes textures to 512)"
        per_epoch = n // bs + (1 if n % bs >= 2 else 0)
        epochs = max(1, math.ceil(steps / per_epoch))
        over["train"].update(epochs=epochs, checkpoint_every=0, resume=False)
        done = epochs * per_epoch
    cfg = method_cfg(name, over)
    _reset_peak(device)
    m = get_method(name)(cfg, _ctx(dm, device, work / name))
    t0 = time.perf_counter()
    m.fit(dm.train_dataloader())
    _sync(device)
    fit_s = time.perf_counter() - t0
    train_s = float(m.timings.get("train_s", fit_s))
    net = getattr(m, "model", None) or getattr(m, "image_net", None)  # the trained network
    params = list(net.parameters()) if isinstance(net, torch.nn.Module) else []
    return {"batch_size": bs, "steps": done, "train_s": train_s, "steps_per_s": done / train_s if train_s else None,
            "fit_s": fit_s, "peak_gpu_mb": _peak_mb(device), "final_loss": _train_log_loss(m),
            "n_params": sum(p.numel() for p in params) or None,
            "n_trainable": sum(p.numel() for p in params if p.requires_grad) or None, **extra}


def timing_table(report: dict[str, Any]) -> str:
    """The short markdown table of timings printed at the end and written beside the JSON."""
    rows = ["| check | result | time | peak GPU MiB |", "|---|---|---|---|"]

    def fmt(v: Any, spec: str = ".1f") -> str:
        return "–" if v is None else format(v, spec)

    pc = report.get("patchcore") or {}
    for label, r in (pc.get("runs") or {}).items():
        rows.append(f"| PatchCore {label} (dim {pc['embed_dim']}) | image AUROC {r['image_auroc']:.3f}, pixel AUROC "
                    f"{r['pixel_auroc']:.3f} | fit {r['fit_s']:.1f} s (extract {r.get('extract_s', 0):.1f}, coreset "
                    f"{r.get('coreset_s', 0):.1f}), predict {r['predict_s']:.1f} s | {fmt(r['peak_gpu_mb'], '.0f')} |")
    if "coreset" in pc:
        c = pc["coreset"]
        rows.append(f"| greedy coreset {c['n_select']} of {c['n_points']} | same indices device/CPU: "
                    f"{c['same_indices_device_vs_cpu']} (overlap {c['overlap_device_vs_cpu']:.3f}), accelerated = plain: "
                    f"{c['same_indices_accelerated_vs_plain']} | device {c['device_s']:.2f} s, CPU plain "
                    f"{c['cpu_plain_s']:.2f} s, accelerated {c['cpu_accelerated_s']:.2f} s | – |")
    if "search" in pc:
        s = pc["search"]
        rows.append(f"| kNN search {s['queries']} x {s['bank']} | {s['backend']} vs torch: same neighbour "
                    f"{s['same_neighbour_fraction']:.4f}, max distance diff {s['max_abs_distance_diff']:.2e} | "
                    f"faiss {s['faiss_s']:.3f} s, torch {s['torch_s']:.3f} s | – |")
    for name in ("cutpaste", "lora_mae", "vae_energy"):
        r = report.get(name)
        if r:
            rows.append(f"| {name} training, batch {r['batch_size']} | {r['steps']} steps, "
                        f"{fmt(r['steps_per_s'], '.2f')} steps/s | {r['train_s']:.1f} s | {fmt(r['peak_gpu_mb'], '.0f')} |")
    for name, err in (report.get("errors") or {}).items():
        rows.append(f"| {name} | **error**: {err.splitlines()[-1][:150]} | – | – |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (default: auto)")
    ap.add_argument("--size", default=None, choices=list(SIZES), help="paper (default on a GPU) or tiny (on CPU)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"),
                    help="MVTec AD root holding the category, or 'synthetic' (default: ../shared/data/mvtec_ad)")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--steps", type=int, default=None, help="training steps per method (paper: 200, tiny: 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch and faiss (default: 1 with tiny sizes, which keeps a busy shared CPU "
                         "usable; the libraries' own default otherwise)")
    ap.add_argument("--only", default="patchcore,cutpaste,lora_mae,vae_energy", help="comma-separated checks")
    args = ap.parse_args(argv)

    from adbench.utils import resolve_device, seed_everything

    device = resolve_device(args.device)
    size_name = args.size or ("paper" if device.type == "cuda" else "tiny")
    size = SIZES[size_name]
    steps = args.steps or size["steps"]
    threads = args.threads or (1 if size_name == "tiny" else None)
    if threads:
        import faiss

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    data = args.data
    if data != "synthetic" and not (Path(data) / args.category / "train" / "good").is_dir():
        if size_name != "tiny":
            print(f"error: {Path(data) / args.category / 'train' / 'good'} not found; pass DATA=/path/to/mvtec_ad "
                  f"(or DATA=synthetic)", file=sys.stderr)
            return 2
        print(f"note: no {args.category} under {data}: using the generated synthetic dataset")
        data = "synthetic"
    category = (args.category if args.category in ("washer", "weave") else "washer") if data == "synthetic" else args.category
    args.outdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict[str, Any] = {"size": size_name, "steps": steps, "data": data, "category": category, "errors": {},
                              "timings_s": {}}
    report["env"] = env = environment(device)
    print(json.dumps(env, indent=2))
    seed_everything(0)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # method work dirs, synthetic data, random MAE weights
    try:
        return _run_checks(args, report, env, device, size_name, size, steps, data, category, work, t_start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_checks(args, report: dict[str, Any], env: dict[str, Any], device: torch.device, size_name: str,
                size: dict[str, Any], steps: int, data: str, category: str, work: Path, t_start: float) -> int:
    from adbench.utils import peak_rss_mb

    workers = 0 if size_name == "tiny" else min(8, os.cpu_count() or 1)
    dm = load_data(data, category, size, workers, work)
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "patchcore": lambda: check_patchcore(dm, device, size, work),
        **{n: (lambda n=n: check_training(n, dm, device, size, work, steps)) for n in ("cutpaste", "lora_mae",
                                                                                       "vae_energy")}}
    for name in [c for c in args.only.split(",") if c]:
        print(f"--- {name}", flush=True)
        t0 = time.perf_counter()
        try:
            report[name] = checks[name]()
        except Exception:  # noqa: BLE001 - one broken path must not hide the others
            report["errors"][name] = traceback.format_exc(limit=6)
            print(report["errors"][name], file=sys.stderr)
        report["timings_s"][name] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {report['timings_s'][name]:.1f} s", flush=True)
    report["total_s"] = round(time.perf_counter() - t_start, 2)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    (args.outdir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    table = timing_table(report)
    (args.outdir / "gpu_check.md").write_text(
        f"gpu_check on {env.get('gpu', env['device'])} ({size_name} sizes, {steps} steps, {data}/{category}), "
        f"total {report['total_s']:.0f} s\n\n{table}\n")
    print(table)
    print(f"total {report['total_s']:.1f} s; wrote {args.outdir / 'gpu_check.json'} and {args.outdir / 'gpu_check.md'}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
