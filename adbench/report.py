"""``results/report.html``: a static, self-contained page (no script, no network) that answers first.

Order: overview (method x category grids of image AUROC, pixel AUROC and AUPRO, ours beside the published
figure, reference baselines as rows), cost beside quality, per category the ROC / PRO curves and per-defect
AUROC, training curves, then the best / worst galleries as JPEG thumbnails. Reads the run records (newest per
variant / category / seed, one preset) through the tables module: records -> tables -> report.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from . import viz
from .data.errors import ConfigError
from .results import load_runs, read_record
from .intervals import TOO_WIDE
from .table1 import (ORDER, REFERENCE, TABLE_METHODS, aggregate, fmt_pm, label, load_published, select, too_wide,
                     variants_of)

METRIC_NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO (FPR ≤ 0.3)"}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.2em auto;max-width:1240px;color:#222;
 padding:0 14px;line-height:1.4}
h1{font-size:1.55em;margin:.2em 0}h2{margin-top:1.8em;border-bottom:1px solid #ddd;font-size:1.3em}
h3{margin:1.2em 0 .3em;font-size:1.05em}
.note{color:#555;font-size:.92em;margin:.3em 0}
.grids{display:flex;flex-wrap:wrap;gap:14px 16px;align-items:flex-start}
figure{margin:0}figcaption{font-weight:600;margin:.2em 0 .3em;font-size:.95em}
table{border-collapse:collapse;font-size:.86em}
td,th{border:1px solid #d6d6d6;padding:3px 5px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}td.name,th.name{text-align:left;white-space:nowrap}
tr.ref td.name{font-style:italic;color:#444}tr.ref:first-of-type td,tr.firstref td{border-top:2px solid #888}
td .v{font-size:1.05em;font-weight:600}td .s{display:block;color:#555;font-size:.82em;white-space:nowrap}
td .below{color:#b00020;font-weight:600}td.na{color:#aaa;background:#fafafa}
td .better{color:#1b6e1b;font-weight:600}td .same{color:#555}
img.fig{max-width:100%;height:auto;display:block;margin:.4em 0}
.scroll{overflow-x:auto;max-width:100%}
.gallery{display:flex;flex-wrap:wrap;gap:6px 10px;max-width:1010px;margin-bottom:4px}
.gallery figure{width:calc((100% - 20px) / 3)}
.gallery img{width:100%;height:auto;display:block;border:1px solid #e4e4e4}
.gallery figcaption{font-weight:400;font-size:.78em;color:#444;margin:.1em 0 .2em;overflow-wrap:anywhere}
.gallery .wrong{color:#b00020}
"""


def _colour(v: float | None) -> str:
    """Cell background for a percentage: pale red (<= 50) through pale yellow (75) to pale green (100)."""
    if v is None or pd.isna(v):
        return ""
    stops = [(50.0, (248, 205, 200)), (75.0, (255, 243, 190)), (90.0, (222, 240, 200)), (100.0, (170, 220, 170))]
    v = min(max(float(v), stops[0][0]), stops[-1][0])
    for (x0, c0), (x1, c1) in zip(stops[:-1], stops[1:]):
        if v <= x1:
            t = (v - x0) / (x1 - x0)
            r, g, b = (round(a + t * (b_ - a)) for a, b_ in zip(c0, c1))
            return f"background:rgb({r},{g},{b})"
    return ""


def _rows(sel: pd.DataFrame) -> list[tuple[str, str]]:
    """(method, variant) rows in table order: methods, then the reference baselines."""
    present = set(zip(sel.method, sel.variant))
    known = [m for m in TABLE_METHODS if m not in REFERENCE] + sorted(set(sel.method) - set(TABLE_METHODS))
    rows = [(m, v) for m in known for v in (variants_of(m) + sorted({v for mm, v in present if mm == m}))]
    rows = list(dict.fromkeys(r for r in rows if r in present))
    return rows + [(m, v) for m in REFERENCE for v in variants_of(m, sel) if (m, v) in present]


def _columns(sel: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, category) columns: MVTec AD in the papers' order, then the others."""
    pairs = set(zip(sel.dataset, sel.category))
    return sorted(pairs, key=lambda p: (p[0] != "mvtec", ORDER.index(p[1]) if p[1] in ORDER else 99, p))


def _published() -> dict[tuple[str, str, str, str], float]:
    pub = load_published()
    return {(r.method, r.variant, r.metric, r.category): float(r.value) for r in pub.itertuples(index=False)}


_VERDICT_HTML = {"better": ("better", "better than ref."), "indistinguishable": ("same", "≈ reference"),
                 "worse": ("below", "worse than ref.")}


def _get(agg: pd.DataFrame, key: tuple, col: str):
    """agg.loc[key, col], None when the column or the value is missing."""
    if col not in agg.columns or key not in agg.index:
        return None
    v = agg.loc[key, col]
    return None if v is None or (isinstance(v, float) and pd.isna(v)) else v


def _grid(agg: pd.DataFrame, rows: list, cols: list, metric: str, pub: dict, show_ds: bool,
          wide: dict | None = None) -> str:
    """One method x category grid of ``metric``: ours (± std, n), its 95 % test-set interval, the published
    figure and the difference, and the verdict against the better reference (a category too small to rank by
    ``metric`` is marked †)."""
    wide = wide or {}
    head = "".join(f"<th>{html.escape(c if not show_ds else f'{d}/{c}')}"
                   f"{' †' if metric in wide.get((d, c), []) else ''}</th>" for d, c in cols)
    out = [f"<figure><figcaption>{METRIC_NAMES[metric]} (%)</figcaption><div class='scroll'><table>"
           f"<tr><th class='name'>method</th>{head}</tr>"]
    def ref_best(d: str, c: str, inp: str | None) -> float | None:
        """The better reference at input ``inp`` (a method is judged against baselines that saw its pixels);
        the best at any input when none ran at that one."""
        vals = [agg.loc[(m, v, d, c), metric] for m, v in rows if m in REFERENCE and (m, v, d, c) in agg.index]
        same = [agg.loc[(m, v, d, c), metric] for m, v in rows if m in REFERENCE and v == inp
                and (m, v, d, c) in agg.index]
        vals = [x for x in (same or vals) if x is not None and not pd.isna(x)]
        return max(vals) if vals else None
    first_ref = True
    for m, v in rows:
        is_ref = m in REFERENCE
        cls = " class='ref firstref'" if is_ref and first_ref else (" class='ref'" if is_ref else "")
        first_ref = first_ref and not is_ref
        cells = []
        for d, c in cols:
            key = (m, v, d, c)
            val = agg.loc[key, metric] if key in agg.index else None
            if val is None or pd.isna(val):
                cells.append("<td class='na'>–</td>")
                continue
            std, n = agg.loc[key, f"{metric}_std"], int(agg.loc[key, "n_runs"])
            txt = f"<span class='v'>{val:.1f}</span>"
            if std is not None and not pd.isna(std):
                txt += f" <span class='s'>± {std:.1f} (n={n})</span>"
            lo, hi = _get(agg, key, f"{metric}_lo"), _get(agg, key, f"{metric}_hi")
            txt += f"<span class='s'>95 % [{lo:.1f}, {hi:.1f}]</span>" if lo is not None and hi is not None \
                else "<span class='s'>95 % [–]</span>"
            p = pub.get((m, v, metric, c)) if d == "mvtec" else None
            if p is not None:
                txt += f"<span class='s'>paper {p:.1f} (Δ {val - p:+.1f})</span>"
            vs = None if is_ref else _get(agg, key, f"{metric}_vs_ref")
            ref = None if is_ref else ref_best(d, c, agg.loc[key, "input"] if "input" in agg.columns else None)
            if vs is not None:
                cls_v, word = _VERDICT_HTML[vs]
                dlo, dhi = _get(agg, key, f"{metric}_diff_lo"), _get(agg, key, f"{metric}_diff_hi")
                tip = html.escape(f"difference to {_get(agg, key, f'{metric}_ref')}: 95 % [{dlo:+.1f}, {dhi:+.1f}]")
                txt += f"<span class='s {cls_v}' title='{tip}'>{word} [{dlo:+.1f}, {dhi:+.1f}]</span>"
            elif not is_ref and ref is not None and val <= ref:
                txt += "<span class='s below'>≤ reference (no interval)</span>"
            cells.append(f"<td style='{_colour(val)}'>{txt}</td>")
        out.append(f"<tr{cls}><td class='name'>{html.escape(label(m, v))}</td>{''.join(cells)}</tr>")
    out.append("</table></div></figure>")
    return "".join(out)


def _errorbar_figure(agg: pd.DataFrame, rows: list, d: str, c: str, styles: dict, title: str):
    """One category: per metric, every variant's value with its 95 % test-set interval as an error bar (hollow
    marker: no interval in the records), reference rows in grey; None when the category has no value."""
    import matplotlib.pyplot as plt

    here = [(m, v) for m, v in rows if (m, v, d, c) in agg.index]
    metrics = [k for k in ("image_auroc", "pixel_auroc", "aupro")
               if k in agg.columns and any(_get(agg, (m, v, d, c), k) is not None for m, v in here)]
    if not here or not metrics:
        return None
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "adbench", "font.size": 11,
                         "axes.spines.top": False, "axes.spines.right": False}):
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics) + 2.2, 0.32 * len(here) + 1.2),
                                 sharey=True, squeeze=False)
        y = list(range(len(here)))[::-1]
        for ax, k in zip(axes[0], metrics):
            for yi, (m, v) in zip(y, here):
                key = (m, v, d, c)
                val = _get(agg, key, k)
                if val is None:
                    continue
                lo, hi = _get(agg, key, f"{k}_lo"), _get(agg, key, f"{k}_hi")
                colour = styles[(m, v)]["color"]
                if lo is not None and hi is not None:
                    ax.errorbar([val], [yi], xerr=[[max(val - lo, 0.0)], [max(hi - val, 0.0)]], fmt="o", ms=5,
                                color=colour, ecolor=colour, elinewidth=1.6, capsize=3)
                else:
                    ax.plot([val], [yi], "o", ms=5, mfc="white", mec=colour)
            ax.set_title(f"{METRIC_NAMES[k].split(' (')[0]} (%)")
            ax.grid(axis="x", alpha=0.3)
        axes[0][0].set_yticks(y)
        axes[0][0].set_yticklabels([label(m, v) for m, v in here])
        fig.suptitle(f"{title}: 95 % test-set intervals (hollow: none in the records)", fontsize=11)
        fig.tight_layout()
    return fig


def _record(path: str) -> dict[str, Any]:
    return read_record(path)[0] or {}


def _representative(sel: pd.DataFrame) -> dict[tuple[str, str, str, str], pd.Series]:
    """Per (method, variant, dataset, category): the record of the lowest seed (newest), for curves and galleries."""
    out = {}
    for key, g in sel.sort_values(["seed", "finished_at"], na_position="first").groupby(
            ["method", "variant", "dataset", "category"], sort=False):
        out[key] = g.iloc[0]
    return out


def _gallery_sources(results_dir: Path, sel: pd.DataFrame) -> dict[tuple[str, str, str, str], tuple[pd.Series, dict]]:
    """Per (method, variant, dataset, category): the lowest seed's record (newest) whose overlay PNGs are on disk,
    with the record; a variant none of whose records has them is left out."""
    out = {}
    for key, g in sel.sort_values(["seed", "finished_at"], ascending=[True, False], na_position="last").groupby(
            ["method", "variant", "dataset", "category"], sort=False):
        for _, row in g.iterrows():
            rec = _record(row.path)
            if _overlay_files(results_dir, rec, row.path):
                out[key] = (row, rec)
                break
    return out


def _maps_dir(results_dir: Path, record_path: str) -> Path:
    return results_dir / "maps" / Path(record_path).resolve().relative_to((results_dir / "runs").resolve()).with_suffix("")


def _overlay_files(results_dir: Path, rec: dict, record_path: str) -> list[Path]:
    """The record's overlay PNGs: where the record says, else beside it under ``<results>/maps/``."""
    listed = [Path(p) for p in rec.get("overlays") or []]
    found = [p for p in listed if p.is_file()]
    if len(found) == len(listed) and found:
        return found
    try:
        here = _maps_dir(results_dir, record_path)
    except ValueError:
        return found
    return [here / p.name for p in listed if (here / p.name).is_file()] or found


def _gallery(results_dir: Path, row: pd.Series, rec: dict) -> str:
    """Thumbnails of the best and worst test images of one run, captions from the record's per-image data."""
    files = _overlay_files(results_dir, rec, row.path)
    if not files:
        return ""
    per = rec.get("per_image") or {}
    picks: dict[str, list[int]] = {}
    if per.get("score"):
        import numpy as np

        k = sum(1 for f in files if f.name.startswith("best_"))
        picks = viz.pick_best_worst(np.asarray(per["score"]), np.asarray(per["label"]), max(k, 1))
    out: dict[str, list[str]] = {"best": [], "worst": []}
    for f in files:
        jpg = viz.thumbnail_jpeg(f)
        if jpg is None:
            continue
        kind, _, num = f.stem.partition("_")
        cap = f"{kind} {num}"
        idx = picks.get(kind, [])
        if num.isdigit() and int(num) - 1 < len(idx):
            i = idx[int(num) - 1]
            name = (per.get("file") or [""] * (i + 1))[i]
            cap += f" · {name} · score {per['score'][i]:.3g}"
        cls = " class='wrong'" if kind == "worst" else ""
        out.setdefault(kind, []).append(
            f"<figure><img alt='{html.escape(cap)}' src='data:image/jpeg;base64,{base64.b64encode(jpg).decode()}'>"
            f"<figcaption{cls}>{html.escape(cap)}</figcaption></figure>")
    rows = [f"<div class='gallery'>{''.join(figs)}</div>" for figs in out.values() if figs]
    seed = f" (seed {int(row.seed)})" if pd.notna(row.get("seed")) else ""
    return f"<h3>{html.escape(label(row.method, row.variant) + seed)}</h3>{''.join(rows)}" if rows else ""


def _defect_table(sel: pd.DataFrame, rows: list, dataset: str, cat: str) -> str:
    """Per-defect image AUROC (%) of one category: rows = variants, columns = defect types."""
    sub = sel[(sel.dataset == dataset) & (sel.category == cat)]
    kinds = sorted(c[len("auroc_"):] for c in sub.columns if c.startswith("auroc_") and sub[c].notna().any())
    if not kinds:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in kinds)
    out = [f"<figure><figcaption>per-defect image AUROC (%): good test images against one defect type</figcaption>"
           f"<div class='scroll'><table><tr><th class='name'>method</th>{head}</tr>"]
    first_ref = True
    for m, v in rows:
        g = sub[(sub.method == m) & (sub.variant == v)]
        if g.empty:
            continue
        is_ref = m in REFERENCE
        cls = " class='ref firstref'" if is_ref and first_ref else (" class='ref'" if is_ref else "")
        first_ref = first_ref and not is_ref
        cells = []
        for k in kinds:
            vals = g[f"auroc_{k}"].dropna().astype(float) * 100
            if vals.empty:
                cells.append("<td class='na'>–</td>")
                continue
            txt = fmt_pm(float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else None)
            cells.append(f"<td style='{_colour(vals.mean())}'>{html.escape(txt)}</td>")
        out.append(f"<tr{cls}><td class='name'>{html.escape(label(m, v))}</td>{''.join(cells)}</tr>")
    out.append("</table></div></figure>")
    return "".join(out)


def build_report(results_dir: str | Path, out: str | Path | None = None, preset: str | None = None) -> Path:
    """Write the report for the successful runs of one preset under ``results_dir`` (default: the preset with
    the most runs); returns its path."""
    results_dir = Path(results_dir)
    out = Path(out) if out else results_dir / "report.html"
    runs = load_runs(results_dir)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'><title>adbench report</title>",
             f"<style>{_CSS}</style></head><body><h1>adbench report</h1>"]
    if runs.empty:
        parts.append("<p>No runs yet: run <code>python -m adbench ...</code> or <code>make table1</code>.</p>")
        return _write(out, parts)
    if preset is None:
        preset = runs.preset.fillna("").value_counts().index[0] or None
    sel = select(runs, preset or None, None, dataset=None)
    if sel.empty:
        parts.append(f"<p>No runs with preset {html.escape(str(preset))} under {html.escape(str(results_dir))}.</p>")
        return _write(out, parts)
    agg = aggregate(sel).set_index(["method", "variant", "dataset", "category"])
    rows, cols = _rows(sel), _columns(sel)
    show_ds = len({d for d, _ in cols}) > 1
    mvtec_run = [c for d, c in cols if d == "mvtec"]
    not_run = [c for c in ORDER if c not in mvtec_run]
    cat_names = ", ".join(c if not show_ds else f"{d}/{c}" for d, c in cols)
    parts.append(f"<p class='note'>Preset <b>{html.escape(str(preset))}</b>: {len(sel)} runs "
                 f"({len(rows)} method variants) on {html.escape(cat_names)}. Newest record per variant, category "
                 "and seed; mean ± std over seeds where there are several (n = seeds).</p>")
    if mvtec_run:
        parts.append(f"<p class='note'>MVTec AD categories run: {len(mvtec_run)} of {len(ORDER)}; not run: "
                     f"{html.escape(', '.join(not_run) or 'none')}.</p>")

    pub = _published()
    wide = too_wide(agg.reset_index())
    parts.append("<h2>Overview</h2><p class='note'>Each cell: ours (percent; ± the spread over training seeds "
                 "where there are several), its 95 % test-set interval (stratified bootstrap over the test images, "
                 "1000 resamples; '[–]': the records hold no data for one, e.g. pixel metrics of records written "
                 "before the per-image histograms), the published figure and the difference where the paper gives "
                 "one. <i>Reference</i> rows are baselines without a model (raw pixel statistics, at the default "
                 "256 → 224 input and at every other input a method here uses). Against the better of them at the "
                 "method's own input, on the same resamples: <span style='color:#1b6e1b'>better than ref.</span> "
                 "(the 95 % interval of the difference, shown in brackets, lies above 0), ≈ reference (it holds 0: "
                 "indistinguishable on this test set), <span style='color:#b00020'>worse than ref.</span> (below 0); "
                 "<span style='color:#b00020'>≤ reference (no interval)</span> compares point values where no paired "
                 f"interval exists. † marks a category whose median interval is wider than {100 * TOO_WIDE:g} points: "
                 "too few test images to rank methods by that metric. Colour: red ≤ 50, yellow 75, green 100.</p>"
                 "<div class='grids'>")
    best = []
    for d, c in cols:
        picks = []
        for m in ("image_auroc", "pixel_auroc", "aupro"):
            sub = agg.xs((d, c), level=("dataset", "category"))[m].dropna() if m in agg else pd.Series(dtype=float)
            if len(sub):
                top = sub.astype(float).max()
                names = [label(mm, vv) for mm, vv in rows if (mm, vv) in sub.index and float(sub[(mm, vv)]) == top]
                names = names[:3] + ([f"{len(names) - 3} more"] if len(names) > 3 else [])
                picks.append(f"{METRIC_NAMES[m].split(' (')[0]} {top:.1f} ({', '.join(names)})")
        if picks:
            best.append(f"<b>{html.escape(c if not show_ds else f'{d}/{c}')}</b>: {html.escape('; '.join(picks))}")
    if best:
        parts.append("<p class='note'>Best per category: " + ". ".join(best) + ".</p>")
    parts += [_grid(agg, rows, cols, m, pub, show_ds, wide) for m in ("image_auroc", "pixel_auroc", "aupro")
              if m in agg and agg[m].notna().any()]
    parts.append("</div>")
    if wide:
        parts.append("<p class='note'>† Too few test images to rank methods by: " + html.escape("; ".join(
            f"{c if not show_ds else f'{d}/{c}'}: {', '.join(METRIC_NAMES[m].split(' (')[0] for m in ms)}"
            for (d, c), ms in wide.items())) + f" (median 95 % test-set interval wider than {100 * TOO_WIDE:g} "
            "points).</p>")

    # cost beside quality
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    styles = {r: viz.style_of(r[0], i) for i, r in enumerate(rows)}
    points = []
    for (m, v), st in styles.items():
        for j, (d, c) in enumerate(cols):
            key = (m, v, d, c)
            if key in agg.index:
                a = agg.loc[key]
                secs = None if pd.isna(a.fit_s) else a.fit_s + (0.0 if pd.isna(a.predict_s) else a.predict_s)
                points.append({"label": label(m, v), "colour": st["color"], "marker": markers[j % len(markers)],
                               "seconds": secs, "memory_mb": None if pd.isna(a.peak_rss_mb) else a.peak_rss_mb,
                               "value": None if pd.isna(a.image_auroc) else a.image_auroc})
    marker_note = ", ".join(f"{c} {'●■▲◆▼'[j] if j < 5 else ''}" for j, (_, c) in enumerate(cols))
    parts.append("<h2>Cost beside quality</h2><p class='note'>Image AUROC against fit + predict wall time and peak "
                 f"resident memory of the run (one point per method and category; marker: {html.escape(marker_note)}"
                 "). Times come from the machine that ran each record (shared CPU cores: noisy). <code>make table1</code> caches "
                 "backbone features, so a PatchCore variant run after another one on the same category skips feature "
                 "extraction in its fit time.</p>")
    parts.append(f"<img class='fig' alt='image AUROC against time and memory' src='{viz.svg_uri(viz.cost_figure(points))}'>")
    head = "".join(f"<th>{html.escape(c)}<br>fit / predict s</th><th>{html.escape(c)}<br>peak MB</th>" for _, c in cols)
    trs = []
    for m, v in rows:
        cells = []
        for d, c in cols:
            if (m, v, d, c) in agg.index:
                a = agg.loc[(m, v, d, c)]
                fp = "–" if a.fit_s is None or pd.isna(a.fit_s) else f"{a.fit_s:.0f} / {a.predict_s:.0f}"
                mem = "–" if a.peak_rss_mb is None or pd.isna(a.peak_rss_mb) else f"{a.peak_rss_mb:.0f}"
                cells += [f"<td>{fp}</td>", f"<td>{mem}</td>"]
            else:
                cells += ["<td class='na'>–</td>"] * 2
        cls = " class='ref'" if m in REFERENCE else ""
        trs.append(f"<tr{cls}><td class='name'>{html.escape(label(m, v))}</td>{''.join(cells)}</tr>")
    parts.append(f"<div class='scroll'><table><tr><th class='name'>method</th>{head}</tr>{''.join(trs)}</table></div>")

    # per category: curves and per-defect AUROC
    rep = _representative(sel)
    records = {key: _record(r.path) for key, r in rep.items()}
    for d, c in cols:
        title = c if not show_ds else f"{d}/{c}"
        lines = []
        for (m, v) in rows:
            key = (m, v, d, c)
            if key not in rep:
                continue
            rec, r = records[key], rep[key]
            per = rec.get("per_image") or {}
            curves = rec.get("curves") or {}
            lines.append({"label": label(m, v) + (f" (seed {int(r.seed)})" if agg.loc[key, "n_runs"] > 1 else ""),
                          "style": styles[(m, v)],
                          "image": (per["score"], per["label"]) if per.get("score") else None,
                          "pixel_roc": curves.get("pixel_roc"), "pro": curves.get("pro")})
        parts.append(f"<h2>{html.escape(title)}</h2>")
        bars = _errorbar_figure(agg, rows, d, c, styles, title)
        if bars is not None:
            parts.append(f"<img class='fig' alt='{html.escape(title)}: metrics with 95 % test-set intervals' "
                         f"src='{viz.svg_uri(bars)}'>")
        if lines:
            parts.append(f"<img class='fig' alt='ROC and PRO curves {html.escape(title)}' "
                         f"src='{viz.svg_uri(viz.curves_figure(lines, f'{title}: ROC and PRO curves'))}'>")
            lacking = [ln["label"] for ln in lines if not ln["pro"]]
            if lacking:
                parts.append("<p class='note'>No pixel ROC / PRO curve in the record (written before the evaluator "
                             f"stored curves) for: {html.escape(', '.join(lacking))}.</p>")
        parts.append(_defect_table(sel, rows, d, c))

    # training curves
    trained = []
    for m, v in rows:
        series = []
        for j, (d, c) in enumerate(cols):
            g = sel[(sel.method == m) & (sel.variant == v) & (sel.dataset == d) & (sel.category == c)]
            for i, r in enumerate(g.sort_values("seed").itertuples(index=False)):
                log = _record(r.path).get("train_log") or []
                if log:
                    series.append({"label": f"{c} seed {int(r.seed)}", "colour": viz.PALETTE[j % len(viz.PALETTE)],
                                   "alpha": 1.0 if i == 0 else 0.55, "log": log})
        fig = viz.training_figure(series, label(m, v)) if series else None
        if fig is not None:
            trained.append(f"<img class='fig' alt='training curves {html.escape(label(m, v))}' src='{viz.svg_uri(fig)}'>")
    parts.append("<h2>Training curves</h2>")
    parts += trained or ["<p class='note'>No record holds a training log (<code>train_log</code>).</p>"]
    if trained:
        parts.insert(-len(trained), "<p class='note'>From the methods' <code>train_log</code> in the run records "
                                    "(averaged to at most 300 points per stage): loss, and accuracy or the held-out "
                                    "reconstruction ratio <code>val_ratio</code> (model error / mean-image error) "
                                    "where the method logs one.</p>")

    # galleries
    parts.append("<h2>Best and worst test images</h2><p class='note'>Per variant, the lowest seed whose overlays "
                 "(<code>save_maps</code>) are on disk: image | "
                 "ground truth (green outline) | anomaly map, for the most confidently right (best) and the most "
                 "wrong (worst) test images, ranked by score within the test set.</p>")
    sources = _gallery_sources(results_dir, sel)
    for d, c in cols:
        blocks = [_gallery(results_dir, *sources[(m, v, d, c)]) for m, v in rows if (m, v, d, c) in sources]
        blocks = [b for b in blocks if b]
        if blocks:
            parts.append(f"<h2>{html.escape(c if not show_ds else f'{d}/{c}')}: galleries</h2>")
            parts += blocks
    t1 = out.parent / "table1.md"
    if t1.is_file():
        parts.append("<p class='note'>All numbers as tables: <code>table1.md</code>, <code>table1.csv</code> and "
                     "<code>table1_defects.csv</code> beside this file.</p>")
    return _write(out, parts)


def _write(out: Path, parts: list[str]) -> Path:
    """Write the page atomically (temporary file + rename); a folder that cannot be written is a one-line
    ConfigError."""
    parts.append("</body></html>")
    from .results import write_texts

    write_texts({out: "\n".join(parts)}, fix="pass --out FILE")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adbench.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results folder holding runs/ (default: results)")
    ap.add_argument("--out", default=None, help="output file (default: <results>/report.html)")
    ap.add_argument("--preset", default=None, help="the preset whose runs to show (default: the one with most runs)")
    args = ap.parse_args(argv)
    try:
        print(f"wrote {build_report(args.results, args.out, args.preset)}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
