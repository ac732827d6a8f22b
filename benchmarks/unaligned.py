"""Map kinds and image scores of LoRA-MAE and VAE-energy on aligned and unaligned data, against the baselines.

Each (method, data, seed) is fitted once through the run's own steps; every map kind the model offers (the chosen
one and ``extra_predictions``) is then evaluated with several image scores. Unaligned data are rotated / shifted
copies of the real categories (``adbench.data.unaligned``) and the synthetic ``weave`` texture.

    python benchmarks/unaligned.py --methods lora_mae,pixel_gaussian --data bottle,bottle_unaligned --seeds 0,1

prints one line per result and appends it as JSON to ``--out`` (default /tmp/unaligned_bench.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "mvtec_ad"


def data_overrides(name: str, unaligned_root: Path) -> list[str]:
    """Hydra overrides of a named input: bottle, transistor, weave (synthetic), <one of these>_unaligned."""
    if name == "weave":
        return ["dataset=synthetic", "category=weave", "dataset.root=/tmp/adbench-synthetic-bench"]
    if name.endswith("_unaligned"):
        cat = name[: -len("_unaligned")]
        from adbench.data.unaligned import make_unaligned

        src = SHARED
        if cat == "weave":  # the generated texture (its pattern has one phase in every image), moved like the others
            from adbench.data.synthetic import ensure_category

            src = ensure_category("/tmp/adbench-synthetic-bench", "weave").parent
        make_unaligned(src, cat, unaligned_root)
        return ["dataset=mvtec", f"dataset.root={unaligned_root}", f"category={cat}"]
    return ["dataset=mvtec", f"dataset.root={SHARED}", f"category={name}"]


def image_score_variants(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Image scores [N] from maps [N, H, W]: max, mean of the top 100 / top 1 % pixels, mean of the map."""
    flat = maps.reshape(maps.shape[0], -1)
    srt = np.sort(flat, axis=1)
    k1 = max(1, flat.shape[1] // 100)
    return {"max": srt[:, -1], "top100": srt[:, -100:].mean(1), "top1pct": srt[:, -k1:].mean(1), "mean": flat.mean(1)}


def evaluate_one(method: str, data: str, seed: int, extra: list[str], unaligned_root: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from adbench.evaluate import image_auroc, pixel_auroc
    from adbench.run import build_context, fit_and_calibrate, predict_and_evaluate

    overrides = [f"method={method}", "preset=cpu", f"seed={seed}", "results_dir=/tmp/adbench-bench25",
                 "progress=false"] + data_overrides(data, unaligned_root) + extra
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    out = Path("/tmp/adbench-bench25/runs/x.json")
    s = build_context(cfg, resolved, method, Path("/tmp/adbench-bench25"), out)
    t0 = time.time()
    fitted = fit_and_calibrate(s)
    ev = predict_and_evaluate(s, fitted)
    inner = getattr(s.method, "selection", None)
    preds = {"main": ev.pred, **(getattr(s.method, "extra_predictions", None) or {})}
    row = {"method": method, "data": data, "seed": seed, "extra": extra, "wall_s": round(time.time() - t0, 1),
           "selection": inner, "metrics": {k: ev.metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")},
           "kinds": {}}
    for kind, p in preds.items():
        maps = np.asarray(p.anomaly_maps, dtype=np.float64)
        entry = {"pixel_auroc": round(float(pixel_auroc(maps, ev.masks)), 4),
                 "image_auroc": round(float(image_auroc(np.asarray(p.image_scores), ev.labels)), 4)}
        for name, sc in image_score_variants(maps).items():
            entry[f"image_{name}"] = round(float(image_auroc(sc, ev.labels)), 4)
        row["kinds"][kind] = entry
    return row


DEFAULT_KIND = {"lora_mae": "error", "vae_energy": "projection"}  # the presets' fixed map before the choice per run
RAW_KINDS = {"lora_mae": ("raw", "none"), "vae_energy": ("projection_raw", "reconstruction_raw")}


def _kind(row: dict, name: str) -> dict | None:
    """Metrics of map kind ``name`` in a row ('main' is the chosen one; 'none' is called 'raw' among extras)."""
    sel = row.get("selection") or {}
    if name in (sel.get("chosen"), {"raw": "none"}.get(name)) and "main" in row["kinds"]:
        return row["kinds"]["main"]
    return row["kinds"].get(name) or row["kinds"].get({"none": "raw"}.get(name, name))


def table(paths: list[str]) -> str:
    """Markdown: per method, data and seed, the kind chosen (recomputed with the current criterion from the
    validation figures in the row), its pixel / image AUROC, the preset's fixed kind before, the best raw map and
    the better baseline at the same input (rows of pixel_gaussian / mean_image with the same data and overrides
    of dataset.image_size)."""
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    base: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] in ("pixel_gaussian", "mean_image"):
            size = next((e.split("=")[1] for e in r["extra"] if e.startswith("dataset.image_size=")), "?")
            base.setdefault((r["data"], size), []).append(r["kinds"]["main"])
    size_of = {"lora_mae": "72", "vae_energy": "256"}
    fmt = lambda m: "–" if m is None else f"{m['pixel_auroc']:.3f} / {m['image_auroc']:.3f}"  # noqa: E731
    out = ["| method | data | seed | chosen (validation score) | chosen: pixel / image AUROC | fixed map before "
           "| best raw map | better baseline |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] not in DEFAULT_KIND:
            continue
        sel = r["selection"]
        score = {k: (sel["pixel_auroc"][k] + sel["image_auroc"][k]) / 2 for k in sel["pixel_auroc"]}
        chosen = max(score, key=score.get)
        raws = [m for m in (_kind(r, k) for k in RAW_KINDS[r["method"]]) if m]
        best_raw = max(raws, key=lambda m: m["pixel_auroc"], default=None)
        bl = base.get((r["data"], size_of[r["method"]]), [])
        bb = {k: max(m[k] for m in bl) for k in ("pixel_auroc", "image_auroc")} if bl else None
        out.append(f"| {r['method']} | {r['data']} | {r['seed']} | {chosen} ({score[chosen]:.3f}) | "
                   f"{fmt(_kind(r, chosen))} | {fmt(_kind(r, DEFAULT_KIND[r['method']]))} | {fmt(best_raw)} | {fmt(bb)} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="lora_mae,vae_energy,pixel_gaussian,mean_image")
    p.add_argument("--data", default="bottle,transistor,bottle_unaligned,transistor_unaligned,weave")
    p.add_argument("--seeds", default="0")
    p.add_argument("--set", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--unaligned-root", default="/tmp/adbench-unaligned")
    p.add_argument("--out", default="/tmp/unaligned_bench.jsonl")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady figures on a shared machine)")
    p.add_argument("--table", nargs="+", metavar="JSONL", help="print the markdown table of earlier outputs and stop")
    a = p.parse_args()
    if a.table:
        print(table(a.table))
        return
    import torch

    torch.set_num_threads(a.threads)
    os.environ.setdefault("TORCH_HOME", str(ROOT.parent / "shared" / "torch_home"))
    for seed in [int(v) for v in a.seeds.split(",")]:
        for data in a.data.split(","):
            for method in a.methods.split(","):
                row = evaluate_one(method, data, seed, list(a.set), Path(a.unaligned_root))
                print(json.dumps(row), flush=True)
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
