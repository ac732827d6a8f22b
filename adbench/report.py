"""``results/report.html``: a static, self-contained report (tables, bar charts, ROC curves, overlay gallery)."""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .results import load_runs
from .viz import bar_figure, roc_figure

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{margin-bottom:.3em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.figs img{max-width:100%;margin:.3em .5em .3em 0;border:1px solid #eee}.gallery img{width:100%;max-width:720px;display:block}
.note{color:#666;font-size:.9em}
"""


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img_file(path: str | Path) -> str | None:
    p = Path(path)
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() if p.is_file() else None


def _md_table_to_html(md: str) -> str:
    """The Markdown tables and headings of table1.md as HTML (no Markdown dependency)."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            head, body = rows[0], rows[2:]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h3>{html.escape(line[3:])}</h3>")
        elif line.startswith("# "):
            continue
        elif line.strip():
            out.append(f"<p class='note'>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def build_report(results_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report for every successful run under ``results_dir``; returns its path."""
    results_dir = Path(results_dir)
    out = Path(out) if out else results_dir / "report.html"
    runs = load_runs(results_dir)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>adbench report</title>",
             f"<style>{_CSS}</style></head><body><h1>adbench report</h1>",
             f"<p class='note'>{len(runs)} runs under <code>{html.escape(str(results_dir))}</code>.</p>"]
    t1 = results_dir / "table1.md"
    if t1.is_file():
        parts += ["<h2>Table 1</h2>", _md_table_to_html(t1.read_text())]
    if runs.empty:
        parts.append("<p>No runs yet: run <code>python -m adbench ...</code> or <code>make table1</code>.</p>")
    else:
        runs = runs.copy()
        runs["label"] = runs.method + runs.variant.map(lambda v: f" ({v})" if v else "")
        metrics = [m for m in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max") if m in runs]
        agg = runs.groupby(["label", "dataset", "category", "preset"], dropna=False)[metrics + ["fit_s", "predict_s", "peak_rss_mb"]].mean()
        parts += ["<h2>All runs (mean over seeds)</h2>", agg.reset_index().to_html(index=False, float_format="%.4f", na_rep="–")]
        parts.append("<h2>Per category</h2><div class='figs'>")
        for metric in metrics[:3]:
            df = runs.dropna(subset=[metric]).rename(columns={"label": "method", "method": "method_name"})
            if not df.empty:
                parts.append(f"<img alt='{metric} per category' src='{_png(bar_figure(df, metric))}'>")
        parts.append("</div><h2>ROC curves (image level)</h2><div class='figs'>")
        for (dataset, cat), sub in runs.groupby(["dataset", "category"]):
            curves = []
            for _, r in sub.iterrows():
                per = json.loads(Path(r.path).read_text()).get("per_image") or {}
                if per.get("score"):
                    curves.append((f"{r.label} s{r.seed}", np.array(per["score"]), np.array(per["label"])))
            if curves:
                fig = roc_figure(curves)
                fig.axes[0].set_title(f"{dataset} / {cat}", fontsize=9)
                parts.append(f"<img alt='ROC {dataset} {cat}' src='{_png(fig)}'>")
        parts.append("</div><h2>Anomaly maps: best and worst test images</h2>")
        parts.append("<p class='note'>Per run (with <code>save_maps=true</code>): image | ground truth | anomaly map, "
                     "for the most confidently right and the most wrong test images.</p>")
        for _, r in runs.sort_values(["dataset", "category", "label"]).iterrows():
            overlays = json.loads(Path(r.path).read_text()).get("overlays") or []
            imgs = [u for u in (_img_file(p) for p in overlays) if u]
            if imgs:
                parts.append(f"<h3>{html.escape(r.label)} · {r.dataset}/{r.category} · seed {r.seed}</h3><div class='gallery'>")
                parts += [f"<img alt='overlay' src='{u}'>" for u in imgs]
                parts.append("</div>")
    parts.append("</body></html>")
    out.write_text("\n".join(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adbench.report", description=__doc__)
    ap.add_argument("--results", default="results", help="results folder holding runs/ (default: results)")
    ap.add_argument("--out", default=None, help="output file (default: <results>/report.html)")
    args = ap.parse_args(argv)
    print(f"wrote {build_report(args.results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
