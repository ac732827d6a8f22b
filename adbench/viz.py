"""Figures: anomaly-map overlays (image | ground truth | heat map), ROC / PRO curves, cost against quality,
training curves, and JPEG thumbnails of the overlays for the report."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .api import Prediction  # noqa: E402
from .data.mvtec import AnomalyDataset  # noqa: E402
from .data.transforms import denormalize  # noqa: E402


def pick_best_worst(scores: np.ndarray, labels: np.ndarray, k: int = 3) -> dict[str, list[int]]:
    """Indices of the ``k`` most confidently right and most wrong test images.

    Right: anomalous images with the highest scores and normal ones with the lowest; wrong: the opposite.
    Scores are ranked within the test set, so the picks do not depend on any threshold.
    """
    rank = np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1)  # 0 = lowest score, 1 = highest
    margin = np.where(labels == 1, rank, 1 - rank)  # 1 = as right as it gets
    order = np.argsort(-margin, kind="stable")
    return {"best": order[:k].tolist(), "worst": order[::-1][:k].tolist()}


def overlay_figure(image: np.ndarray, mask: np.ndarray, amap: np.ndarray, title: str,
                   vmin: float, vmax: float) -> plt.Figure:
    """One row: the image, its ground-truth mask outlined, the anomaly map over the image."""
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(image)
    if mask.any():
        axes[1].contour(mask, levels=[0.5], colors="lime", linewidths=1.2)
    axes[1].set_title("ground truth", fontsize=9)
    axes[2].imshow(image)
    axes[2].imshow(amap, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
    axes[2].set_title("anomaly map", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_overlays(dataset: AnomalyDataset, pred: Prediction, labels: np.ndarray, out_dir: str | Path,
                  k: int = 3) -> list[Path]:
    """Write PNG overlays of the best and worst ``k`` test images to ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    picks = pick_best_worst(pred.image_scores, labels, k)
    vmin, vmax = np.percentile(pred.anomaly_maps, [1, 99.9])  # one colour scale for the whole run
    written = []
    for kind, idx in picks.items():
        for n, i in enumerate(idx):
            item = dataset[i]
            img = denormalize(item["image"]).permute(1, 2, 0).numpy()
            s = dataset.samples[i]
            title = f"{kind} {n + 1}: {s.defect_type}/{s.path.name}  score {pred.image_scores[i]:.3g}"
            fig = overlay_figure(img, item["mask"].numpy().astype(bool), pred.anomaly_maps[i], title, vmin, vmax)
            path = out / f"{kind}_{n + 1}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
    return written


def map_overlay(image: np.ndarray, amap: np.ndarray, low: float, high: float, anomalous: bool | None = None) -> "Image":
    """The anomaly map over ``image`` (uint8 [H, W, 3]) on the fixed scale ``low``..``high``: transparent at ``low``
    and below, fully hot (jet) from ``high``; a red frame marks an anomalous decision. Below it a colour bar with
    the two values printed, so the scale travels with the picture: [H + bar, W, 3]."""
    from PIL import Image

    m = amap.astype(np.float64)
    norm = np.clip((m - low) / max(high - low, 1e-12), 0, 1)  # [H, W]
    heat = matplotlib.colormaps["jet"](norm)[..., :3]  # [H, W, 3]
    alpha = 0.65 * norm[..., None]  # normal areas show the image itself
    out = (1 - alpha) * (image / 255.0) + alpha * heat
    out = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
    if anomalous:
        b = max(2, out.shape[0] // 64)
        out[:b], out[-b:], out[:, :b], out[:, -b:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    return Image.fromarray(np.concatenate([out, colour_bar(out.shape[1], low, high)]))


def colour_bar(width: int, low: float, high: float) -> np.ndarray:
    """A white strip uint8 [h, width, 3]: ``low`` printed at the left, ``high`` at the right, the jet colours of
    the overlay (fully opaque) between them."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    lo, hi = f"{low:.4g}", f"{high:.4g}"
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), lo + hi + "0", font=font)
    text_h = box[3] - box[1]
    strip = Image.new("RGB", (width, text_h + 6), "white")
    draw = ImageDraw.Draw(strip)
    w_lo = draw.textlength(lo, font=font)
    w_hi = draw.textlength(hi, font=font)
    draw.text((2, 3 - box[1]), lo, fill="black", font=font)
    draw.text((width - 2 - w_hi, 3 - box[1]), hi, fill="black", font=font)
    x0, x1 = int(w_lo) + 6, width - int(w_hi) - 6
    a = np.asarray(strip).copy()
    if x1 > x0:
        colours = (matplotlib.colormaps["jet"](np.linspace(0, 1, x1 - x0))[:, :3] * 255).round().astype(np.uint8)
        a[2:-2, x0:x1] = colours[None]
    return a


REFERENCE_STYLE = {"mean_image": ("#444444", (0, (5, 2))), "pixel_gaussian": ("#8c8c8c", (0, (1, 1.5)))}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]
_RC = {"svg.fonttype": "none", "svg.hashsalt": "adbench", "font.size": 12.5, "axes.titlesize": 13,  # report figures
       "legend.fontsize": 12, "axes.spines.top": False, "axes.spines.right": False}


def _report_style(fn):
    """Run a figure builder under the report's matplotlib settings (the global ones stay untouched)."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with plt.rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapped


def style_of(method: str, index: int) -> dict[str, Any]:
    """Line style of a table row: a palette colour for methods, grey dashes for the reference baselines."""
    if method in REFERENCE_STYLE:
        colour, dash = REFERENCE_STYLE[method]
        return {"color": colour, "linestyle": dash, "linewidth": 1.6}
    return {"color": PALETTE[index % len(PALETTE)], "linestyle": "-", "linewidth": 1.6}


def _legend_below(fig: plt.Figure, handles: list, labels: list[str], ncol: int = 4) -> None:
    """A legend under the axes (never over the data)."""
    fig.legend(handles, labels, loc="lower center", ncol=min(ncol, max(len(labels), 1)), frameon=False,
               bbox_to_anchor=(0.5, 0.0))


@_report_style
def curves_figure(lines: Sequence[Mapping[str, Any]], title: str) -> plt.Figure:
    """Image ROC, pixel ROC and PRO (FPR up to 0.3) side by side; ``lines`` hold ``label``, ``style`` and any
    of ``image`` ((scores, labels)), ``pixel_roc`` ({fpr, tpr}) and ``pro`` ({fpr, pro}); the legend is below."""
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, 3, figsize=(11.0, 4.4 + 0.25 * ((len(lines) - 1) // 4)))
    handles, labels = [], []
    for ln in lines:
        h = None
        if ln.get("image") is not None:
            scores, lab = ln["image"]
            if len(set(lab)) == 2:
                fpr, tpr, _ = roc_curve(lab, scores)
                (h,) = axes[0].plot(fpr, tpr, **ln["style"])
        if ln.get("pixel_roc"):
            (h,) = axes[1].plot(ln["pixel_roc"]["fpr"], ln["pixel_roc"]["tpr"], **ln["style"])
        if ln.get("pro"):
            (h,) = axes[2].plot(ln["pro"]["fpr"], ln["pro"]["pro"], **ln["style"])
        if h is not None:
            handles.append(h)
            labels.append(ln["label"])
    for ax, name, xlim in ((axes[0], "image ROC", 1.0), (axes[1], "pixel ROC", 1.0), (axes[2], "PRO (FPR ≤ 0.3)", 0.3)):
        ax.plot([0, xlim], [0, xlim] if xlim == 1.0 else [0, 0], ls=":", c="#bbbbbb", lw=1)
        ax.set_xlim(0, xlim)
        ax.set_ylim(0, 1.01)
        ax.set_title(name)
        ax.set_xlabel("false positive rate")
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("true positive rate")
    axes[2].set_ylabel("per-region overlap")
    for ax in axes[1:]:
        if not ax.lines[:-1]:
            ax.text(0.5, 0.5, "no pixel curves in the records", ha="center", va="center", color="#888888",
                    transform=ax.transAxes)
    fig.suptitle(title, x=0.01, ha="left", fontsize=14)
    fig.tight_layout(rect=(0, 0.07 + 0.055 * ((len(labels) - 1) // 4), 1, 1))
    _legend_below(fig, handles, labels, ncol=4)
    return fig


@_report_style
def cost_figure(points: Sequence[Mapping[str, Any]], metric: str = "image AUROC (%)") -> plt.Figure:
    """Quality against cost: ``points`` hold ``label``, ``colour``, ``marker``, ``seconds`` (fit + predict),
    ``memory_mb`` and ``value``; one panel per cost, legend below."""
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.6), sharey=True)
    seen: dict[str, Any] = {}
    for p in points:
        for ax, x in ((axes[0], p.get("seconds")), (axes[1], p.get("memory_mb"))):
            if x is None or p.get("value") is None:
                continue
            h = ax.scatter([x], [p["value"]], color=p["colour"], marker=p["marker"], s=55, edgecolor="white",
                           linewidth=0.6, zorder=3)
            seen.setdefault(p["label"], h)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("fit + predict time (s, log scale)")
    axes[1].set_xlabel("peak resident memory (MB)")
    axes[0].set_ylabel(metric)
    for ax in axes:
        ax.grid(alpha=0.25)
    fig.tight_layout(rect=(0, 0.07 + 0.055 * ((len(seen) - 1) // 4), 1, 1))
    _legend_below(fig, list(seen.values()), list(seen), ncol=4)
    return fig


@_report_style
def training_figure(series: Sequence[Mapping[str, Any]], title: str,
                    keys: Sequence[str] = ("loss", "acc", "val_ratio")) -> plt.Figure | None:
    """Training curves against step, one panel per (stage, key) present; ``series`` hold ``label``, ``colour``,
    ``alpha`` and ``log`` (a train_log). None when no series has a logged value."""
    panels: list[tuple[str, str]] = []
    for s in series:
        for e in s["log"]:
            for k in keys:
                if e.get(k) is not None and (e["stage"], k) not in panels:
                    panels.append((e["stage"], k))
    if not panels:
        return None
    panels.sort(key=lambda p: (p[0], keys.index(p[1])))
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(min(11.0, 3.2 * n + 1.2), 3.9), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (stage, key) in zip(axes[0], panels):
        for s in series:
            pts = [(e["step"], e[key]) for e in s["log"] if e["stage"] == stage and e.get(key) is not None]
            if pts:
                (h,) = ax.plot(*zip(*pts), color=s["colour"], alpha=s.get("alpha", 1.0), lw=1.4)
                handles.setdefault(s["label"], h)
        ax.set_title(f"{stage}: {key}" if stage != "train" else key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.25)
        vals = [e[key] for s in series for e in s["log"] if e["stage"] == stage and e.get(key) is not None]
        if key != "acc" and vals and min(vals) > 0 and max(vals) / min(vals) > 30:
            ax.set_yscale("log")
    fig.suptitle(title, x=0.01, ha="left", fontsize=14)
    fig.tight_layout(rect=(0, 0.1 + 0.06 * ((len(handles) - 1) // 4), 1, 1))
    _legend_below(fig, list(handles.values()), list(handles), ncol=4)
    return fig


@_report_style
def svg_uri(fig: plt.Figure) -> str:
    """The figure as a self-contained ``data:image/svg+xml`` URI (text kept as text: small and sharp)."""
    import base64

    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnail_jpeg(path: str | Path, width: int = 330, quality: int = 70) -> bytes | None:
    """An overlay PNG cut to its image row (titles above and white margins dropped), resized to ``width`` px,
    as JPEG bytes; None when the file is missing or unreadable."""
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB")
    except OSError:
        return None
    a = np.asarray(img)
    ink = (a < 235).any(axis=2)  # non-white pixels
    rows = np.flatnonzero(ink.mean(axis=1) > 0.3)  # rows crossing the image panels, not title text
    cols = np.flatnonzero(ink.any(axis=0))
    if len(rows) and len(cols):
        img = img.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
    h = max(1, round(img.height * width / img.width))
    buf = io.BytesIO()
    img.resize((width, h), Image.LANCZOS).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()
