"""Metrics as pure functions: image AUROC, pixel AUROC, AUPRO@0.3, image F1-max, per-defect AUROC.

Pixel metrics avoid an argsort over all pixels: the normal and the anomalous pixel scores are sorted
separately (float32, in place) and counted against each other with ``searchsorted`` in chunks, so the
evaluator's extra memory is about one float32 copy of the maps (0.35 GB for 1725 images at 224 x 224).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

_CHUNK = 1 << 22


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} contains {bad} NaN or inf values; refusing to compute metrics from them")


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of image scores against labels (1 = anomalous). NaN when only one class is present."""
    labels = np.asarray(labels).astype(int)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 over all thresholds of the image scores. NaN (undefined) when there is no anomalous image."""
    labels = np.asarray(labels).astype(int)
    if not labels.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(labels, np.asarray(scores, dtype=np.float64))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def _split_sorted(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted normal-pixel scores, sorted anomalous-pixel scores), float32."""
    m = np.asarray(masks, dtype=bool)
    neg = np.asarray(maps, dtype=np.float32)[~m]
    pos = np.asarray(maps, dtype=np.float32)[m]
    neg.sort(kind="stable")
    pos.sort(kind="stable")
    return neg, pos


def _auroc_sorted(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg), exact, from two sorted arrays."""
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    total = 0.0
    for i in range(0, len(pos), _CHUNK):
        p = pos[i : i + _CHUNK]
        lo = np.searchsorted(neg, p, side="left")
        hi = np.searchsorted(neg, p, side="right")
        total += float(lo.sum(dtype=np.float64)) + 0.5 * float((hi - lo).sum(dtype=np.float64))
    return total / (float(len(neg)) * float(len(pos)))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """ROC AUC over every test pixel (equals sklearn's ``roc_auc_score`` on the flattened arrays)."""
    neg, pos = _split_sorted(maps, masks)
    return _auroc_sorted(neg, pos)


def _component_weights(masks: np.ndarray) -> np.ndarray:
    """Per anomalous pixel (in ``maps[masks]`` order): 1 / (area of its component * number of components)."""
    m = np.asarray(masks, dtype=bool)
    weights = np.zeros(m.shape, dtype=np.float64)
    n_comp = 0
    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity
    for i in range(m.shape[0]):
        if not m[i].any():
            continue
        lab, n = ndimage.label(m[i], structure=structure)
        areas = np.bincount(lab.ravel())
        w = np.zeros_like(areas, dtype=np.float64)
        w[1:] = 1.0 / areas[1:]
        weights[i] = w[lab]
        n_comp += n
    return weights[m] / max(n_comp, 1)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (MVTec AD's definition).

    PRO at a threshold is the mean, over all connected components of the ground truth (8-connectivity),
    of the fraction of the component's pixels above the threshold; FPR is over all normal pixels.
    """
    m = np.asarray(masks, dtype=bool)
    a = np.asarray(maps, dtype=np.float32)
    if not m.any() or m.all():
        return float("nan")
    neg = a[~m]
    neg.sort()  # ascending
    pos = a[m]
    w = _component_weights(m)
    order = np.argsort(pos, kind="stable")
    pos, w = pos[order], w[order]
    cum = np.concatenate([[0.0], np.cumsum(w)])  # cum[k] = weight of the k lowest positives
    total_w = cum[-1]

    n_neg = len(neg)
    limit = fpr_limit * n_neg  # how many normal pixels may be above the threshold
    n_full = int(np.floor(limit))
    frac = limit - n_full
    area = 0.0
    # Walk the normal pixels from the highest score down; each moves FPR by 1/n_neg. A group of k tied normal
    # pixels at score s spans one straight segment of the curve, from PRO(> s) to PRO(>= s), so the j-th of
    # them covers the j-th k-th of that segment (this also places the fpr_limit crossing on the segment).
    stop = min(n_full + 1, n_neg)
    for i in range(0, stop, _CHUNK):
        rank = np.arange(i, min(i + _CHUNK, stop))  # 0 = highest normal score
        s = neg[n_neg - 1 - rank]
        n_gt = n_neg - np.searchsorted(neg, s, side="right")  # normal pixels strictly above s
        k = n_neg - np.searchsorted(neg, s, side="left") - n_gt  # tie group size
        lo = total_w - cum[np.searchsorted(pos, s, side="right")]  # PRO(> s)
        hi = total_w - cum[np.searchsorted(pos, s, side="left")]  # PRO(>= s)
        j = rank - n_gt
        width = np.where(rank < n_full, 1.0, frac)
        area += float((width * (lo + (hi - lo) * (j + width / 2) / k)).sum())
    return min(1.0, area / n_neg / fpr_limit)


def per_defect_auroc(scores: np.ndarray, labels: np.ndarray, defect_types: Sequence[str]) -> dict[str, float]:
    """Image AUROC of good images against each defect type alone."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    types = np.asarray(list(defect_types))
    good = labels == 0
    out = {}
    for d in sorted(set(types[labels == 1])):
        sel = good | (types == d)
        out[d] = image_auroc(scores[sel], labels[sel])
    return out


def compute_metrics(image_scores: np.ndarray, anomaly_maps: np.ndarray | None, labels: np.ndarray,
                    masks: np.ndarray | None, defect_types: Sequence[str] | None = None,
                    fpr_limit: float = 0.3) -> dict[str, float]:
    """All metrics from image scores [N], anomaly maps [N, H, W], labels [N] and masks [N, H, W].

    Returns ``image_auroc``, ``image_f1_max``, ``pixel_auroc``, ``aupro`` and, when ``defect_types`` is
    given, ``auroc_<defect>`` per defect type. Pixel metrics are omitted when maps or masks are None.
    """
    scores = np.asarray(image_scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"image_scores has {scores.shape[0]} entries but labels has {labels.shape[0]}")
    _check_finite("image_scores", scores)
    out: dict[str, float] = {"image_auroc": image_auroc(scores, labels), "image_f1_max": f1_max(scores, labels)}
    if anomaly_maps is not None and masks is not None:
        maps = np.asarray(anomaly_maps)
        masks = np.asarray(masks, dtype=bool)
        if maps.shape != masks.shape:
            raise ValueError(f"anomaly_maps shape {maps.shape} differs from masks shape {masks.shape}")
        _check_finite("anomaly_maps", maps)
        out["pixel_auroc"] = pixel_auroc(maps, masks)
        out["aupro"] = aupro(maps, masks, fpr_limit)
    if defect_types is not None:
        for d, v in per_defect_auroc(scores, labels, defect_types).items():
            out[f"auroc_{d}"] = v
    return out


def metric_curves(anomaly_maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3,
                  n_points: int = 61) -> dict[str, dict[str, list[float]]]:
    """Down-sampled pixel ROC curve and PRO curve, for plots; {} when the masks hold one class only.

    Returns ``{"pixel_roc": {"fpr": [...], "tpr": [...]}, "pro": {"fpr": [...], "pro": [...]}}``: points at
    thresholds taken from the normal-pixel scores so that FPR steps evenly (PRO: from 0 to ``fpr_limit``, ROC:
    from 0 to 1 with extra points below FPR 0.05). Each point is exact for its threshold (same PRO definition
    as ``aupro``); only the number of points is reduced, so the curves stay a few kilobytes in a run record.
    """
    m = np.asarray(masks, dtype=bool)
    a = np.asarray(anomaly_maps, dtype=np.float32)
    if not m.any() or m.all():
        return {}
    neg = a[~m]
    neg.sort()
    pos = a[m]
    w = _component_weights(m)
    order = np.argsort(pos, kind="stable")
    pos, w = pos[order], w[order]
    cum = np.concatenate([[0.0], np.cumsum(w)])
    n_neg, n_pos = len(neg), len(pos)

    def at(fprs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.clip(np.ceil((1.0 - fprs) * n_neg).astype(np.int64) - 1, 0, n_neg - 1)
        t = neg[idx]  # threshold: a pixel is called anomalous when its score is above t
        above_neg = n_neg - np.searchsorted(neg, t, side="right")
        k = np.searchsorted(pos, t, side="right")
        return above_neg / n_neg, (n_pos - k) / n_pos, cum[-1] - cum[k]

    f_roc, tpr, _ = at(np.unique(np.concatenate([np.linspace(0, 1, n_points), np.geomspace(1e-4, 0.05, 15)])))
    f_pro, _, pro = at(np.linspace(0, fpr_limit, n_points))
    r = lambda v: [round(float(x), 5) for x in v]  # noqa: E731
    # the lowest threshold leaves every pixel at or below it out: close the ROC curve at (1, 1)
    return {"pixel_roc": {"fpr": r([0.0, *f_roc, 1.0]), "tpr": r([0.0, *tpr, 1.0])},
            "pro": {"fpr": r([0.0, *f_pro]), "pro": r([0.0, *pro])}}
