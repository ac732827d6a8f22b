"""The evaluator against scikit-learn, a naive AUPRO reference and hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, roc_auc_score

from adbench.evaluate import aupro, compute_metrics, f1_max, image_auroc, per_defect_auroc, pixel_auroc


def naive_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Threshold-by-threshold PRO/FPR curve over every distinct score, trapezoid to ``limit`` / limit."""
    comps = []
    for i in range(len(masks)):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        comps += [(i, lab == k) for k in range(1, n + 1)]
    neg = maps[~masks]
    pts = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = float((neg >= t).mean())
        pro = float(np.mean([(maps[i][c] >= t).mean() for i, c in comps]))
        pts.append((fpr, pro))
    f, p = np.array(pts).T
    keep = f <= limit
    fx, px = list(f[keep]), list(p[keep])
    j = int(np.searchsorted(f, limit, side="right"))
    if j < len(f) and fx[-1] < limit:  # interpolate the crossing point
        f0, f1, p0, p1 = f[j - 1], f[j], p[j - 1], p[j]
        fx.append(limit)
        px.append(p0 + (p1 - p0) * (limit - f0) / (f1 - f0))
    return float(np.trapezoid(px, fx) / limit)


def _random_case(seed: int, n: int = 6, size: int = 24, levels: int | None = None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n // 2):
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 6, 2)
            h, w = rng.integers(2, 6, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = rng.random(masks.shape).astype(np.float32) + 0.6 * masks
    if levels:
        maps = np.round(maps * levels) / levels  # many ties
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [None, 7])
def test_pixel_auroc_matches_sklearn(seed, levels):
    maps, masks = _random_case(seed, levels=levels)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("levels", [None, 5])
def test_aupro_matches_naive_reference(seed, levels):
    maps, masks = _random_case(seed, levels=levels)
    assert aupro(maps, masks) == pytest.approx(naive_aupro(maps, masks), abs=1e-6)


def test_aupro_hand_computed():
    # one image, 4 normal pixels scored 0.1..0.4 ... and two components of one pixel each
    maps = np.array([[[0.9, 0.2, 0.1], [0.35, 0.3, 0.4]]], dtype=np.float32)
    masks = np.array([[[1, 0, 0], [1, 0, 0]]], dtype=bool)  # one vertical component of 2 pixels
    # comp pixels 0.9 and 0.35; normals 0.2, 0.1, 0.3, 0.4 (4 of them).
    # Threshold sweep: t=0.9 -> fpr 0, pro .5; t=0.4 -> fpr .25, pro .5; t=0.35 -> fpr .25, pro 1.0;
    # t=0.3 -> fpr .5, pro 1. Up to fpr .3: area = .25*.5 + (.3-.25)*1.0 = .175 -> /.3
    assert aupro(maps, masks) == pytest.approx(0.175 / 0.3, abs=1e-9)


def test_perfect_and_inverted_maps():
    _, masks = _random_case(3)
    perfect = masks.astype(np.float32)
    assert pixel_auroc(perfect, masks) == 1.0
    assert aupro(perfect, masks) == pytest.approx(1.0)
    assert pixel_auroc(-perfect, masks) == 0.0
    assert aupro(-perfect, masks) == pytest.approx(0.0)


def test_image_metrics_and_per_defect():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [1] * 10)
    scores = rng.random(20) + labels * 0.5
    types = ["good"] * 10 + ["crack"] * 5 + ["hole"] * 5
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    best = max(f1_score(labels, scores >= t) for t in scores)
    assert f1_max(scores, labels) == pytest.approx(best)
    per = per_defect_auroc(scores, labels, types)
    sel = np.array([t in ("good", "crack") for t in types])
    assert per["crack"] == pytest.approx(roc_auc_score(labels[sel], scores[sel]))
    assert set(per) == {"crack", "hole"}


def test_compute_metrics_keys_and_validation():
    maps, masks = _random_case(4)
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    scores = maps.reshape(len(maps), -1).max(1)
    types = ["good" if lab == 0 else "dent" for lab in labels]
    m = compute_metrics(scores, maps, labels, masks, types)
    assert {"image_auroc", "pixel_auroc", "aupro", "image_f1_max", "auroc_dent"} <= set(m)
    bad = scores.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(bad, maps, labels, masks)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(scores, maps[:, :-1], labels, masks)


def test_memory_frugal_at_mvtec_scale():
    """1725 x 224 x 224 maps (MVTec AD's whole test set): extra memory stays near one float32 copy."""
    import resource

    n, s = 1725, 224
    rng = np.random.default_rng(0)
    masks = np.zeros((n, s, s), dtype=bool)
    masks[::3, 100:130, 90:140] = True
    maps = rng.random((n, s, s), dtype=np.float32)
    maps[masks] += 0.5
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    m = compute_metrics(maps.reshape(n, -1).max(1), maps, masks.reshape(n, -1).any(1), masks)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert 0.8 < m["pixel_auroc"] <= 1.0 and 0.5 < m["aupro"] <= 1.0
    assert grown < 1200, f"evaluator grew peak RSS by {grown:.0f} MiB for {maps.nbytes / 2**20:.0f} MiB of maps"
