"""Figures: anomaly-map overlays (image | ground truth | heat map), ROC curves, per-category bar charts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

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


def roc_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> plt.Figure:
    """Image-level ROC curves, one per (label, scores, labels)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for name, scores, labels in curves:
        if len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} ({roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def bar_figure(df, metric: str) -> plt.Figure:
    """Per-category bars of ``metric``, one colour per method (seaborn)."""
    import seaborn as sns

    cats = sorted(df["category"].unique())
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(cats) + 2), 3.2))
    sns.barplot(data=df, x="category", y=metric, hue="method", order=cats, ax=ax, errorbar=None)
    ax.set_ylim(max(0.0, float(df[metric].min()) - 0.05), 1.0)
    ax.set_xlabel("")
    ax.set_title(metric.replace("_", " "))
    ax.legend(fontsize=7, loc="lower left")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    return fig
