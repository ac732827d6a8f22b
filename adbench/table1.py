"""``make table1``: run the paper-table sweeps and write ``table1.md`` / ``table1.csv`` beside the published numbers.

Rows are the 15 MVTec AD categories and the mean; per method variant (PatchCore coreset 25 / 10 / 1 %, CutPaste
normal / scar / 3-way, and every other landed method) our image AUROC, the published one, their difference, and
our pixel AUROC and AUPRO. Categories not run show "–". Sweeps resume: finished jobs are not run again.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pandas as pd

from .data.mvtec import OBJECTS, TEXTURES
from .registry import list_methods
from .results import load_runs

PUBLISHED = Path(__file__).resolve().parent / "published" / "table1.csv"
ORDER = list(TEXTURES) + list(OBJECTS)  # the papers' row order
# per method: the sweep over the paper's variants, and how a record's config names its variant
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "patchcore": ("method.coreset.ratio", ["0.25", "0.1", "0.01"]),
    "cutpaste": ("method.variant", ["normal", "scar", "3way"]),
}
TABLE_METHODS = ("patchcore", "cutpaste", "lora_mae", "vae_energy", "mean_image", "pixel_gaussian")


def variant_of(method: str, cfg: dict) -> str:
    """The published column a run belongs to (e.g. 'coreset 10%', '3way'); '' for single-variant methods."""
    m = cfg.get("method", {})
    if method == "patchcore":
        return f"coreset {float(m.get('coreset', {}).get('ratio', 0)) * 100:g}%"
    if method == "cutpaste":
        return str(m.get("variant", ""))
    return ""


def load_published(path: Path = PUBLISHED) -> pd.DataFrame:
    """Long table: method, variant, metric, category, value (percent)."""
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    wide = pd.read_csv(StringIO("\n".join(lines)))
    return wide.melt(id_vars=["method", "variant", "metric"], var_name="category", value_name="value")


def present_categories(data: Path) -> list[str]:
    """MVTec AD categories that have a train/good folder under ``data``."""
    return [c for c in ORDER if (data / c / "train" / "good").is_dir()]


def run_sweeps(methods: list[str], categories: list[str], preset: str, data: Path, results: Path,
               seeds: str, dry_run: bool = False) -> None:
    """One resumable Hydra multirun per method over the present categories and the method's variants."""
    for method in methods:
        cmd = [sys.executable, "-m", "adbench", "-m", f"method={method}", f"preset={preset}", "dataset=mvtec",
               f"dataset.root={data}", f"results_dir={results}", f"category={','.join(categories)}",
               f"seed={seeds}", "resume=true", "save_maps=true", f"feature_cache={results / 'cache'}"]
        if method in VARIANTS:
            key, values = VARIANTS[method]
            cmd.append(f"{key}={','.join(values)}")
        print("$ " + " ".join(cmd[1:]), flush=True)
        if not dry_run:
            subprocess.run(cmd, check=False)  # failed jobs are recorded; the table shows what finished


def _pct(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100 * float(v), 1)


def build(results: Path, preset: str, methods: list[str]) -> pd.DataFrame:
    """Long table (method, variant, category, ours, published, diff, pixel_auroc, aupro) incl. mean rows."""
    runs = load_runs(results)
    pub = load_published()
    pub_img = pub[pub.metric == "image_auroc"]
    rows = []
    for method in methods:
        if runs.empty:
            sub = runs
        else:
            sub = runs[(runs.method == method) & (runs.dataset == "mvtec") & (runs.preset == preset)]
            # a config changed since an earlier run: only the newest record of each (variant, category, seed) counts
            sub = sub.sort_values("finished_at", na_position="first", kind="stable") \
                .drop_duplicates(["variant", "category", "seed"], keep="last")
        variants = [f"coreset {float(v) * 100:g}%" for v in VARIANTS["patchcore"][1]] if method == "patchcore" else \
            VARIANTS[method][1] if method in VARIANTS else [""]
        for variant in variants:
            vsub = sub[sub["variant"] == variant] if not sub.empty else sub
            for cat in ORDER:
                csub = vsub[vsub.category == cat] if not vsub.empty else vsub
                p = pub_img[(pub_img.method == method) & (pub_img.variant == variant) & (pub_img.category == cat)]
                published = float(p.value.iloc[0]) if len(p) else None
                ours = _pct(csub.image_auroc.mean()) if len(csub) else None
                rows.append({"method": method, "variant": variant, "category": cat, "image_auroc": ours,
                             "published_image_auroc": published,
                             "diff": round(ours - published, 1) if ours is not None and published is not None else None,
                             "pixel_auroc": _pct(csub.pixel_auroc.mean()) if len(csub) and "pixel_auroc" in csub else None,
                             "aupro": _pct(csub.aupro.mean()) if len(csub) and "aupro" in csub else None,
                             "n_runs": int(len(csub))})
            done = [r for r in rows[-len(ORDER):] if r["image_auroc"] is not None]
            p = pub_img[(pub_img.method == method) & (pub_img.variant == variant) & (pub_img.category == "mean")]
            pmean = float(p.value.iloc[0]) if len(p) else None
            mean = lambda k: round(sum(r[k] for r in done) / len(done), 1) if done and all(r[k] is not None for r in done) else None  # noqa: E731
            full = len(done) == len(ORDER)
            rows.append({"method": method, "variant": variant, "category": "mean", "categories_run": len(done),
                         "image_auroc": mean("image_auroc"), "published_image_auroc": pmean,
                         "diff": round(mean("image_auroc") - pmean, 1) if full and pmean is not None else None,
                         "pixel_auroc": mean("pixel_auroc"), "aupro": mean("aupro"),
                         "n_runs": sum(r["n_runs"] for r in done)})
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def to_markdown(table: pd.DataFrame, preset: str, command: str) -> str:
    """One Markdown table per method: category rows, per variant ours | paper | Δ | pixel | AUPRO."""
    out = ["# Table 1: MVTec AD image AUROC (%), ours beside the published numbers", "",
           f"Preset `{preset}`. Reproduce with `{command}`. Published numbers: `adbench/published/table1.csv` "
           "(sources cited there). '–': not run (or not published). Δ = ours − published.", ""]
    names = {"patchcore": "PatchCore (Roth et al. 2022, Table S1; paper: WRN-50)",
             "cutpaste": "CutPaste (Li et al. 2021, Table 1; paper: ResNet-18)",
             "lora_mae": "LoRA-MAE (no published Table 1)", "vae_energy": "VAE + energy projection (no published Table 1)",
             "mean_image": "Baseline: distance to the mean training image (no model)",
             "pixel_gaussian": "Baseline: per-pixel Gaussian z-score of raw pixels (no model)"}
    for method, sub in table.groupby("method", sort=False):
        variants = list(dict.fromkeys(sub.variant))
        out += [f"## {names.get(method, method)}", ""]
        head = ["category"]
        for v in variants:
            tag = f"{v} " if v else ""
            head += [f"{tag}ours", f"{tag}paper", "Δ", "pixel AUROC", "AUPRO"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        cats = list(dict.fromkeys(sub.category))
        for cat in cats:
            cells = [cat if cat != "mean" else f"mean ({int(sub.categories_run.max())}/{len(ORDER)} run)"]
            for v in variants:
                r = sub[(sub.variant == v) & (sub.category == cat)].iloc[0]
                d = r["diff"]
                cells += [_fmt(r.image_auroc), _fmt(r.published_image_auroc),
                          "–" if d is None or (isinstance(d, float) and math.isnan(d)) else f"{d:+.1f}",
                          _fmt(r.pixel_auroc), _fmt(r.aupro)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adbench.table1", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="paper", choices=["paper", "cpu", "tiny"], help="method profile (default: paper)")
    ap.add_argument("--data", default=os.environ.get("ADBENCH_MVTEC_ROOT", "datasets/mvtec_ad"),
                    help="MVTec AD root; only the categories present there are run (default: datasets/mvtec_ad)")
    ap.add_argument("--results", default="results", help="results folder for runs and the tables (default: results)")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: every landed table method)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, averaged (default: 0)")
    ap.add_argument("--categories", default=None,
                    help="comma-separated categories to run (default: every category present under --data)")
    ap.add_argument("--no-run", action="store_true", help="only rebuild the tables from existing runs")
    ap.add_argument("--no-report", action="store_true", help="do not rebuild results/report.html")
    args = ap.parse_args(argv)
    data, results = Path(args.data), Path(args.results)
    landed = [m for m in TABLE_METHODS if m in list_methods()]
    methods = [m for m in args.methods.split(",")] if args.methods else landed
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:
        print(f"error: --methods names unregistered method(s) {unknown}; landed: {', '.join(landed)}", file=sys.stderr)
        return 2
    cats = present_categories(data)
    if args.categories:
        wanted = args.categories.split(",")
        absent = [c for c in wanted if c not in cats]
        if absent:
            print(f"error: --categories {','.join(absent)} not found under {data.resolve()} "
                  f"(present: {', '.join(cats) or 'none'})", file=sys.stderr)
            return 2
        cats = wanted
    if not args.no_run:
        if not cats:
            print(f"error: no MVTec AD category found under {data.resolve()} (looked for <category>/train/good); "
                  "pass DATA=DIR (make) or --data DIR", file=sys.stderr)
            return 2
        print(f"table1: methods {', '.join(methods)} on {', '.join(cats)} ({len(cats)}/15 categories present)")
        run_sweeps(methods, cats, args.preset, data, results, args.seeds)
    table = build(results, args.preset, methods)
    command = f"make table1 PRESET={args.preset} DATA={args.data} RESULTS={args.results}"
    results.mkdir(parents=True, exist_ok=True)
    table.to_csv(results / "table1.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    md = to_markdown(table, args.preset, command)
    (results / "table1.md").write_text(md + "\n")
    print(md)
    print(f"wrote {results / 'table1.md'} and {results / 'table1.csv'}")
    if not args.no_report:
        from .report import build_report

        print(f"wrote {build_report(results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
