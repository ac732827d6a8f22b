"""Table 1 as pure functions of the run records: DataFrames and Markdown, ours beside the published numbers.

Rows are method variants (PatchCore coreset 25 / 10 / 1 %, CutPaste normal / scar / 3-way, every other landed
method) and the two reference baselines (``mean_image``, ``pixel_gaussian``: no model, shown beside every
method); per category our image AUROC (mean ± std over seeds, newest record per variant / category / seed),
the published one, their difference, our pixel AUROC and AUPRO, and per-defect image AUROC. ``python -m
adbench.table1`` (``make table1``) runs the sweeps and writes the files (see ``__main__``).
"""

from __future__ import annotations

import lzma
import math
from io import StringIO
from pathlib import Path

import pandas as pd

from ..data.mvtec import OBJECTS, TEXTURES
from ..intervals import LEVEL, TOO_WIDE, pairing_key, paired, percentile_interval, record_resamples
from ..results import load_runs, read_record, variant_of, warn  # noqa: F401  (variant_of: re-exported for callers)

PUBLISHED = Path(__file__).resolve().parent.parent / "published" / "table1.csv"
ORDER = list(TEXTURES) + list(OBJECTS)  # the papers' row order
# per method: the sweep over the paper's variants (Hydra override and values)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "patchcore": ("method.coreset.ratio", ["0.25", "0.1", "0.01"]),
    "cutpaste": ("method.variant", ["normal", "scar", "3way"]),
}
REFERENCE = ("mean_image", "pixel_gaussian")  # reference baselines: no model, seed-independent
TABLE_METHODS = ("patchcore", "cutpaste", "lora_mae", "vae_energy", *REFERENCE)
METRICS = ("image_auroc", "pixel_auroc", "aupro")
NAMES = {"patchcore": "PatchCore", "cutpaste": "CutPaste", "lora_mae": "LoRA-MAE", "vae_energy": "VAE-energy",
         "mean_image": "mean image", "pixel_gaussian": "pixel Gaussian"}
SOURCES = {"patchcore": "PatchCore (Roth et al. 2022, Table S1; paper: WRN-50)",
           "cutpaste": "CutPaste (Li et al. 2021, Table 1; paper: ResNet-18)",
           "lora_mae": "LoRA-MAE (no published Table 1)", "vae_energy": "VAE + energy projection (no published Table 1)",
           "mean_image": "Reference: distance to the mean training image (no model)",
           "pixel_gaussian": "Reference: per-pixel Gaussian z-score of raw pixels (no model)"}


DEFAULT_INPUT = "256→224 px"  # the datamodule's default geometry, the reference baselines' first row


def variants_of(method: str, present: "pd.DataFrame | None" = None) -> list[str]:
    """The variant names a method has in the table ('' for single-variant methods). The reference baselines have
    one variant per input geometry they were run at (``present``: the aggregated records), the default first."""
    if method in REFERENCE:
        seen = set() if present is None or present.empty else set(present[present.method == method].variant)
        return [v for v in (DEFAULT_INPUT, *sorted(seen - {DEFAULT_INPUT})) if v in seen] or [DEFAULT_INPUT]
    if method == "patchcore":
        return [f"coreset {float(v) * 100:g}%" for v in VARIANTS["patchcore"][1]]
    return list(VARIANTS[method][1]) if method in VARIANTS else [""]


def label(method: str, variant: str = "") -> str:
    """Short display name: 'PatchCore 10%', 'CutPaste 3-way', 'pixel Gaussian (ref.)'."""
    name = NAMES.get(method, method)
    v = variant.replace("coreset ", "").replace("3way", "3-way")
    if method in REFERENCE:
        return f"{name} (ref., {v})" if v else f"{name} (ref.)"
    return f"{name} {v}".strip()


def load_published(path: Path = PUBLISHED) -> pd.DataFrame:
    """Long table: method, variant, metric, category, value (percent)."""
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    wide = pd.read_csv(StringIO("\n".join(lines)))
    return wide.melt(id_vars=["method", "variant", "metric"], var_name="category", value_name="value")


def newest(runs: pd.DataFrame) -> pd.DataFrame:
    """Only the newest record of each (method, variant, dataset, category, seed, preset): when a config changed
    since an earlier run, the stale record does not count."""
    if runs.empty:
        return runs
    keys = [k for k in ("method", "variant", "dataset", "category", "seed", "preset") if k in runs]
    return runs.sort_values("finished_at", na_position="first", kind="stable").drop_duplicates(keys, keep="last")


def select(runs: pd.DataFrame, preset: str | None, methods: list[str] | None = None,
           dataset: str | None = "mvtec") -> pd.DataFrame:
    """The records a table counts: one dataset and preset (None: any), the given methods, newest per seed."""
    if runs.empty:
        return runs
    keep = pd.Series(True, index=runs.index)
    if dataset is not None:
        keep &= runs.dataset == dataset
    if preset is not None:
        keep &= runs.preset == preset
    if methods is not None:
        keep &= runs.method.isin(methods)
    return newest(runs[keep])


def _pct(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100 * float(v), 1)


_RESAMPLES: dict[tuple[str, float], tuple[tuple, dict]] = {}


def record_values(path: str) -> tuple[tuple, dict]:
    """(pairing key, {metric: values on the bootstrap resamples}) of the record at ``path``, cached per file
    version; pixel metrics only where the record holds ``pixel_histograms``."""
    p = Path(path)
    try:
        stamp = (str(p.resolve()), p.stat().st_mtime)
    except OSError:
        return (), {}
    if stamp not in _RESAMPLES:
        rec = read_record(p, validate=False)[0] or {}
        try:
            vals = record_resamples(rec)
        except (ValueError, KeyError, TypeError, OSError, EOFError, lzma.LZMAError) as err:
            warn(f"{p}: its pixel_histograms cannot be read ({err}); pixel intervals left out")
            vals = record_resamples({k: v for k, v in rec.items() if k != "pixel_histograms"})
        _RESAMPLES[stamp] = (pairing_key(rec), vals)
    return _RESAMPLES[stamp]


def seed_mean_values(paths: list[str]) -> tuple[tuple | None, dict]:
    """The resample values of the mean over several seeds' records (the same test images, so the same
    resamples): per metric that every record has; (None, {}) when the records were scored on different test
    sets."""
    got = [record_values(p) for p in paths]
    keys = {k for k, _ in got}
    if len(keys) != 1 or not all(v for _, v in got):
        return None, {}
    names = [m for m in METRICS + ("image_f1_max",) if all(m in v for _, v in got)]
    return keys.pop(), {m: sum(v[m] for _, v in got) / len(got) for m in names}


def aggregate(runs: pd.DataFrame, intervals: bool = True) -> pd.DataFrame:
    """Per (method, variant, dataset, category): mean and std (over seeds, sample std; NaN for one seed) of the
    metrics in percent, the seeds, and the mean fit / predict seconds and peak memory. With ``intervals`` (and a
    ``path`` column): ``<metric>_lo`` / ``_hi``, the 95 % test-set interval of that mean (bootstrap over the test
    images, the seeds averaged on each resample; None where the records cannot give one), and for every
    non-reference row the paired comparison with the better reference at its input (:func:`add_verdicts`)."""
    cols = ["method", "variant", "dataset", "category"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    rows, values = [], {}
    for key, g in runs.groupby(cols, sort=False, dropna=False):
        row = dict(zip(cols, key))
        for m in METRICS:
            vals = g[m].dropna().astype(float) if m in g else pd.Series(dtype=float)
            row[m] = _pct(vals.mean()) if len(vals) else None
            row[f"{m}_std"] = _pct(vals.std(ddof=1)) if len(vals) > 1 else None
        row["n_runs"] = int(len(g))
        row["input"] = g["input"].iloc[-1] if "input" in g else ""
        row["seeds"] = ",".join(str(s) for s in sorted(g.seed.dropna().astype(int).unique()))
        for k in ("fit_s", "predict_s", "peak_rss_mb"):
            row[k] = float(g[k].astype(float).mean()) if k in g and g[k].notna().any() else None
        if intervals and "path" in g:
            pair, vals = seed_mean_values(list(g.path))
            values[key] = (pair, vals)
            for m in METRICS:
                ci = percentile_interval(vals[m], LEVEL) if m in vals and row[m] is not None else None
                row[f"{m}_lo"], row[f"{m}_hi"] = (None, None) if ci is None else (_pct(ci[0]), _pct(ci[1]))
        rows.append(row)
    out = pd.DataFrame(rows)
    return add_verdicts(out, values) if intervals and values else out


def add_verdicts(agg: pd.DataFrame, values: dict) -> pd.DataFrame:
    """Per non-reference row and metric: ``<metric>_vs_ref`` ('better' / 'indistinguishable' / 'worse': the
    95 % interval of the paired difference to the better reference at the row's input lies above 0 / holds 0 /
    lies below 0; None without the data for it), ``<metric>_ref`` (that reference's label) and
    ``<metric>_diff_lo`` / ``_diff_hi`` (percent). The better reference is the one with the higher point value
    among those run at the row's input (at any input when none ran at it)."""
    agg = agg.copy()
    for m in METRICS:
        for c in ("vs_ref", "ref", "diff_lo", "diff_hi"):
            agg[f"{m}_{c}"] = None
    cols = ["method", "variant", "dataset", "category"]
    for i, r in agg.iterrows():
        if r.method in REFERENCE:
            continue
        refs = agg[agg.method.isin(REFERENCE) & (agg.dataset == r.dataset) & (agg.category == r.category)]
        same = refs[refs.input == r.input] if "input" in refs else refs
        refs = same if len(same) else refs
        mine = values.get(tuple(r[c] for c in cols))
        for m in METRICS:
            cand = refs[refs[m].notna()] if m in refs else refs.iloc[0:0]
            if mine is None or cand.empty or _nan(r[m]):
                continue
            best = cand.loc[cand[m].astype(float).idxmax()]
            theirs = values.get(tuple(best[c] for c in cols))
            if theirs is None or theirs[0] != mine[0] or m not in theirs[1] or m not in mine[1]:
                continue
            d = paired(mine[1][m], theirs[1][m], LEVEL)
            if d is None:
                continue
            agg.at[i, f"{m}_vs_ref"] = d["verdict"]
            agg.at[i, f"{m}_ref"] = label(best.method, best.variant)
            agg.at[i, f"{m}_diff_lo"], agg.at[i, f"{m}_diff_hi"] = _pct(d["low"]), _pct(d["high"])
    return agg


def too_wide(agg: pd.DataFrame, width: float = TOO_WIDE,
             keys: tuple[str, ...] = ("dataset", "category")) -> dict[tuple, list[str]]:
    """Per ``keys`` group (default (dataset, category)): the metrics whose median 95 % test-set interval over
    the group's rows is wider than ``width`` (fraction; 0.10 = 10 points): too few test images there to rank
    methods by that metric."""
    out: dict[tuple, list[str]] = {}
    if agg.empty:
        return out
    for key, g in agg.groupby(list(keys), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for m in METRICS:
            if f"{m}_lo" not in g:
                continue
            w = (pd.to_numeric(g[f"{m}_hi"], errors="coerce") - pd.to_numeric(g[f"{m}_lo"], errors="coerce")).dropna()
            if len(w) and float(w.median()) > 100 * width:
                out.setdefault(key, []).append(m)
    return out


def build(results: Path, preset: str, methods: list[str]) -> pd.DataFrame:
    """Long table, one row per (method, variant, category) for the 15 categories and a mean row: ours
    (``image_auroc`` and its ``_std``), ``published_image_auroc``, ``diff``, ``pixel_auroc``, ``aupro`` (with
    stds), ``n_runs``, ``seeds``, ``role`` ('method' or 'reference'), ``label``."""
    agg = aggregate(select(load_runs(results), preset, methods))
    pub = load_published()
    pub_img = pub[pub.metric == "image_auroc"]
    rows = []
    for method in methods:
        for variant in variants_of(method, agg):
            cat_rows = []
            for cat in ORDER:
                a = agg[(agg.method == method) & (agg.variant == variant) & (agg.category == cat)] \
                    if not agg.empty else agg
                r = a.iloc[0].to_dict() if len(a) else {}
                p = pub_img[(pub_img.method == method) & (pub_img.variant == variant) & (pub_img.category == cat)]
                published = float(p.value.iloc[0]) if len(p) else None
                ours = r.get("image_auroc")
                cat_rows.append({"method": method, "variant": variant, "label": label(method, variant),
                                 "role": "reference" if method in REFERENCE else "method", "category": cat,
                                 "image_auroc": ours, "image_auroc_std": r.get("image_auroc_std"),
                                 "published_image_auroc": published,
                                 "diff": round(ours - published, 1) if ours is not None and published is not None else None,
                                 "pixel_auroc": r.get("pixel_auroc"), "pixel_auroc_std": r.get("pixel_auroc_std"),
                                 "aupro": r.get("aupro"), "aupro_std": r.get("aupro_std"),
                                 "n_runs": int(r.get("n_runs", 0)), "seeds": r.get("seeds", ""),
                                 **{f"{m}_{c}": _none(r.get(f"{m}_{c}")) for m in METRICS
                                    for c in ("lo", "hi", "vs_ref", "ref", "diff_lo", "diff_hi")}})
            done = [r for r in cat_rows if r["image_auroc"] is not None]
            p = pub_img[(pub_img.method == method) & (pub_img.variant == variant) & (pub_img.category == "mean")]
            pmean = float(p.value.iloc[0]) if len(p) else None

            def mean(k: str) -> float | None:
                vals = [r[k] for r in done]
                return round(sum(vals) / len(vals), 1) if vals and all(v is not None for v in vals) else None

            full = len(done) == len(ORDER)
            rows += cat_rows
            rows.append({"method": method, "variant": variant, "label": label(method, variant),
                         "role": "reference" if method in REFERENCE else "method", "category": "mean",
                         "categories_run": len(done), "image_auroc": mean("image_auroc"),
                         "published_image_auroc": pmean,
                         "diff": round(mean("image_auroc") - pmean, 1) if full and pmean is not None else None,
                         "pixel_auroc": mean("pixel_auroc"), "aupro": mean("aupro"),
                         "n_runs": sum(r["n_runs"] for r in done), "seeds": ""})
    return pd.DataFrame(rows)


def per_defect(results: Path, preset: str | None, methods: list[str], dataset: str | None = "mvtec") -> pd.DataFrame:
    """Per-defect image AUROC (good test images against one defect type), percent: one row per (method,
    variant, category, defect) with mean and std over seeds and the number of runs."""
    runs = select(load_runs(results), preset, methods, dataset)
    cols = ["method", "variant", "label", "role", "category", "defect", "auroc", "auroc_std", "n_runs"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    defect_cols = [c for c in runs.columns if c.startswith("auroc_")]
    for (method, variant, cat), g in runs.groupby(["method", "variant", "category"], sort=False):
        for c in defect_cols:
            vals = g[c].dropna().astype(float)
            if len(vals):
                rows.append({"method": method, "variant": variant, "label": label(method, variant),
                             "role": "reference" if method in REFERENCE else "method", "category": cat,
                             "defect": c[len("auroc_"):], "auroc": _pct(vals.mean()),
                             "auroc_std": _pct(vals.std(ddof=1)) if len(vals) > 1 else None, "n_runs": int(len(vals))})
    out = pd.DataFrame(rows, columns=cols)
    rank = {(m, v): i for i, (m, v) in enumerate((m, v) for m in methods for v in variants_of(m, runs))}
    out["_cat"] = out.category.map(lambda c: ORDER.index(c) if c in ORDER else len(ORDER))
    out["_row"] = [rank.get((m, v), len(rank)) for m, v in zip(out.method, out.variant)]
    return out.sort_values(["_cat", "category", "_row", "defect"], kind="stable").drop(columns=["_cat", "_row"]) \
        .reset_index(drop=True)


def _none(v):
    """NaN (pandas' missing value) as None."""
    return None if _nan(v) else v


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v) -> str:
    return "–" if _nan(v) else (f"{v:.1f}" if isinstance(v, float) else str(v))


def fmt_ci(mean, std=None, lo=None, hi=None) -> str:
    """'98.2 [97.4, 98.9]' or, with seeds, '98.2 ± 0.4 [97.4, 98.9]' (± the spread over seeds, [ ] the 95 %
    test-set interval); '[–]' where the records give no interval; '–' without a value."""
    if _nan(mean):
        return "–"
    ci = "[–]" if _nan(lo) or _nan(hi) else f"[{lo:.1f}, {hi:.1f}]"
    return f"{fmt_pm(mean, std)} {ci}"


VERDICT_MARK = {"better": "better", "indistinguishable": "≈", "worse": "worse"}


def fmt_verdicts(row) -> str:
    """'better / ≈ / worse' for image AUROC / pixel AUROC / AUPRO against the better reference; '–' where there
    is no paired interval."""
    return " / ".join(VERDICT_MARK.get(_none(getattr(row, f"{m}_vs_ref", None)), "–") for m in METRICS)


def fmt_pm(mean, std, n: int | None = None) -> str:
    """'99.7', '99.7 ± 0.3 (n=3)' or '–'."""
    if _nan(mean):
        return "–"
    if _nan(std):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f}" + (f" (n={n})" if n else "")


def categories_run(table: pd.DataFrame) -> list[str]:
    """Categories (paper order) where at least one variant has a result."""
    done = set(table[(table.category != "mean") & table.image_auroc.notna()].category) if not table.empty else set()
    return [c for c in ORDER if c in done]


def summary_markdown(table: pd.DataFrame) -> str:
    """One block per category run: every variant, then the reference rows; mean ± std where seeds > 1, the 95 %
    test-set interval in brackets, the verdict against the better reference; categories whose intervals are too
    wide to rank by a metric are marked † and named below the table."""
    head = "| category | method | image AUROC | paper | Δ | pixel AUROC | AUPRO | vs ref. (image / pixel / AUPRO) | seeds |"
    out = [head, "|---|---|---:|---:|---:|---:|---:|---|---|"]
    cats = table[table.category != "mean"]
    wide = too_wide(cats, keys=("category",)) if "image_auroc_lo" in cats else {}
    for cat in categories_run(table):
        sub = table[table.category == cat]
        shown = f"{cat} †" if (cat,) in wide else cat
        for role in ("method", "reference"):
            for r in sub[sub.role == role].itertuples(index=False):
                if _nan(r.image_auroc):
                    continue
                d = "–" if _nan(r.diff) else f"{r.diff:+.1f}"
                name = f"*{r.label}*" if role == "reference" else r.label
                ci = {m: (getattr(r, f"{m}_lo", None), getattr(r, f"{m}_hi", None)) for m in METRICS}
                verdicts = "" if role == "reference" else fmt_verdicts(r)
                out.append(f"| {shown} | {name} | {fmt_ci(r.image_auroc, r.image_auroc_std, *ci['image_auroc'])} | "
                           f"{_fmt(r.published_image_auroc)} | {d} | "
                           f"{fmt_ci(r.pixel_auroc, r.pixel_auroc_std, *ci['pixel_auroc'])} | "
                           f"{fmt_ci(r.aupro, r.aupro_std, *ci['aupro'])} | {verdicts} | {r.n_runs} ({r.seeds}) |")
    if wide:
        names = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}
        out += ["", "† Too few test images to rank methods by " + "; ".join(
            f"{c}: {', '.join(names[m] for m in ms)}" for (c,), ms in wide.items()) +
            f" (the median 95 % test-set interval there is wider than {100 * TOO_WIDE:g} points)."]
    return "\n".join(out)


def defects_markdown(defects: pd.DataFrame) -> str:
    """Per category: rows = variants (reference rows last), columns = defect types, image AUROC (%)."""
    out = []
    for cat, sub in defects.groupby("category", sort=False):
        kinds = sorted(sub.defect.unique())
        out += [f"### {cat}", "", "| method | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for (lab, role), g in sub.groupby(["label", "role"], sort=False):
            vals = {r.defect: fmt_pm(r.auroc, r.auroc_std) for r in g.itertuples(index=False)}
            name = f"*{lab}*" if role == "reference" else lab
            out.append(f"| {name} | " + " | ".join(vals.get(k, "–") for k in kinds) + " |")
        out.append("")
    return "\n".join(out)


def paper_markdown(table: pd.DataFrame) -> list[str]:
    """The papers' layout: per method, the 15 categories and the mean; per variant ours | paper | Δ | pixel | AUPRO."""
    out = []
    for method, sub in table[table.role == "method"].groupby("method", sort=False):
        variants = list(dict.fromkeys(sub.variant))
        out += [f"### {SOURCES.get(method, method)}", ""]
        head = ["category"]
        for v in variants:
            tag = f"{v} " if v else ""
            head += [f"{tag}ours", f"{tag}paper", "Δ", "pixel AUROC", "AUPRO"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for cat in dict.fromkeys(sub.category):
            cells = [cat if cat != "mean" else f"mean ({int(sub.categories_run.max())}/{len(ORDER)} run)"]
            for v in variants:
                r = sub[(sub.variant == v) & (sub.category == cat)].iloc[0]
                cells += [_fmt(r.image_auroc), _fmt(r.published_image_auroc),
                          "–" if _nan(r["diff"]) else f"{r['diff']:+.1f}", _fmt(r.pixel_auroc), _fmt(r.aupro)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out


def to_markdown(table: pd.DataFrame, preset: str, command: str, defects: pd.DataFrame | None = None) -> str:
    """table1.md: the categories run (methods and reference rows), per-defect AUROC, then the papers' layout."""
    run = categories_run(table)
    missing = [c for c in ORDER if c not in run]
    out = ["# Table 1: MVTec AD, ours beside the published numbers (%)", "",
           f"Preset `{preset}`. Reproduce with `{command}`. Published numbers: `adbench/published/table1.csv` "
           "(sources cited there). '–': not run (or not published). Δ = ours − published image AUROC. "
           "Mean ± sample std over seeds where a variant has several (seeds column: runs and seeds); only the newest "
           "record of each variant, category and seed counts. *Reference* rows (no model) are the floor a method "
           "has to clear; they run at the dataset's default input (resize 256, crop 224) and at every other input a "
           "method's preset uses (e.g. 72→64 px): compare a method with the reference row of its own input.", "",
           "Brackets: the 95 % test-set interval (stratified bootstrap over the test images, "
           "1000 resamples, seed 0; with several seeds, of their mean): how much the number could move on another "
           "draw of test images of the same kind. ± is the spread over training seeds. '[–]': the records hold no "
           "data for an interval (pixel metrics of records written before the per-image histograms). *vs ref.*: "
           "image AUROC / pixel AUROC / AUPRO against the better reference at the method's input, on the same "
           "resamples: *better* (the interval of the difference lies above 0), ≈ (indistinguishable: it holds 0), "
           "*worse* (below 0), '–' (no paired interval).", "",
           f"Categories run: {', '.join(run) or 'none'} ({len(run)}/{len(ORDER)}). "
           f"Not run: {', '.join(missing) or 'none'}.", "",
           "## Categories run", "", summary_markdown(table), ""]
    if defects is not None and not defects.empty:
        out += ["## Per-defect image AUROC (good test images against one defect type)", "", defects_markdown(defects)]
    out += ["## Paper layout (15 categories)", ""] + paper_markdown(table)
    return "\n".join(out)
