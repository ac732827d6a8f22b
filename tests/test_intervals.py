"""Test-set intervals (adbench.intervals): resamples against plain loops, DeLong by hand, paired verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adbench import intervals as iv
from adbench.evaluate import aupro, pixel_auroc
from adbench.record_schema import record_problem


def _small_case(seed: int = 1, n_good: int = 5, n_bad: int = 7, size: int = 8):
    """Maps on a 0.1 grid (many ties), rectangular defects (some images with two regions), max-pooled scores."""
    rng = np.random.default_rng(seed)
    n = n_good + n_bad
    labels = np.array([0] * n_good + [1] * n_bad)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n_good, n):
        y, x = rng.integers(0, size - 3, 2)
        masks[i, y:y + 3, x:x + 2] = True
        if i % 2:
            masks[i, -1, -1] = True
    maps = (np.round(rng.random((n, size, size)) * 10) / 10 + masks * np.round(rng.random((n, size, size)) * 5) / 10)
    maps = maps.astype(np.float32)
    scores = np.round(maps.reshape(n, -1).max(axis=1), 1).astype(np.float64)
    return scores, labels, maps, masks


def _plain_auroc(s: np.ndarray, lab: np.ndarray) -> float:
    pos, neg = s[lab == 1], s[lab == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _plain_f1(s: np.ndarray, lab: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(s):
        called = s >= t
        tp = float(np.sum(called & (lab == 1)))
        if tp:
            prec, rec = tp / called.sum(), tp / lab.sum()
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def test_resamples_are_stratified_and_deterministic():
    labels = np.array([0, 1, 1, 0, 1, 0, 0])
    a = iv.resample_indices(labels, 200, seed=3)
    assert a.shape == (200, 7)
    assert np.array_equal(a, iv.resample_indices(labels, 200, seed=3))
    assert not np.array_equal(a, iv.resample_indices(labels, 200, seed=4))
    assert (labels[a] == np.array([0, 0, 0, 0, 1, 1, 1])).all()  # good slots, then defective slots, every row
    rng = np.random.default_rng(3)  # the documented recipe
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    want = np.concatenate([good[rng.integers(0, 4, (200, 4))], bad[rng.integers(0, 3, (200, 3))]], axis=1)
    assert np.array_equal(a, want)


def test_every_resample_matches_plain_numpy_to_1e12():
    """Image AUROC and F1-max against pairwise loops, pixel AUROC and AUPRO against the exact evaluator on the
    resampled maps (a bin per distinct score makes the histogram path exact)."""
    scores, labels, maps, masks = _small_case()
    hist = iv.pixel_histograms(maps, masks, edges=np.unique(maps))
    vals = iv.resample_values(scores, labels, hist, n_resamples=60, seed=0)
    idx = iv.resample_indices(labels, 60, 0)
    for b, i in enumerate(idx):
        assert abs(vals["image_auroc"][b] - _plain_auroc(scores[i], labels[i])) < 1e-12
        assert abs(vals["image_f1_max"][b] - _plain_f1(scores[i], labels[i])) < 1e-12
        assert abs(vals["pixel_auroc"][b] - pixel_auroc(maps[i], masks[i])) < 1e-12
        assert abs(vals["aupro"][b] - aupro(maps[i], masks[i])) < 1e-12


def test_default_bins_stay_within_their_bound():
    rng = np.random.default_rng(5)
    _, labels, _, masks = _small_case(seed=5, size=24)
    maps = (rng.normal(size=masks.shape) + 1.5 * masks).astype(np.float32)  # continuous: no ties
    scores = maps.reshape(len(maps), -1).max(axis=1)
    hist = iv.pixel_histograms(maps, masks)
    vals = iv.resample_values(scores, labels, hist, n_resamples=20, seed=1)
    for b, i in enumerate(iv.resample_indices(labels, 20, 1)):
        assert abs(vals["pixel_auroc"][b] - pixel_auroc(maps[i], masks[i])) <= vals["pixel_auroc_bound"][b] + 1e-12
        assert abs(vals["aupro"][b] - aupro(maps[i], masks[i])) <= vals["aupro_bound"][b] + 1e-12


def test_delong_variance_by_hand():
    # defective 0.9, 0.6; good 0.5, 0.7, 0.2. V10 = (1, 2/3), V01 = (1, 1/2, 1); AUROC 5/6;
    # var = var(V10)/2 + var(V01)/3 = (1/18)/2 + (1/12)/3 = 1/18
    auc, var = iv.delong([0.9, 0.6, 0.5, 0.7, 0.2], [1, 1, 0, 0, 0])
    assert auc == pytest.approx(5 / 6, abs=1e-15)
    assert var == pytest.approx(1 / 18, abs=1e-15)
    lo, hi = iv.delong_interval([0.9, 0.6, 0.5, 0.7, 0.2], [1, 1, 0, 0, 0])
    assert lo == pytest.approx(5 / 6 - 1.959963984540054 * (1 / 18) ** 0.5, abs=1e-12) and hi == 1.0
    # a tie counts one half in both components
    auc, var = iv.delong([0.5, 0.5], [1, 0])
    assert auc == 0.5 and var == 0.0


def test_paired_difference_with_itself_is_exactly_zero():
    scores, labels, maps, masks = _small_case()
    hist = iv.pixel_histograms(maps, masks)
    a = iv.resample_values(scores, labels, hist, n_resamples=100)
    b = iv.resample_values(scores.copy(), labels.copy(), iv.pixel_histograms(maps.copy(), masks.copy()), 100)
    for m in iv.METRICS:
        d = iv.paired(a[m], b[m])
        assert d == {"low": 0.0, "high": 0.0, "verdict": "indistinguishable"}


def test_better_on_every_image_is_better():
    rng = np.random.default_rng(2)
    labels = np.array([0] * 30 + [1] * 30)
    weak = rng.normal(size=60) + 0.6 * labels  # AUROC about 0.65
    strong = weak + np.where(labels == 1, 2.0, -2.0)  # every defective image higher, every good one lower
    a, b = iv.resample_values(strong, labels), iv.resample_values(weak, labels)
    for m in ("image_auroc", "image_f1_max"):
        assert iv.paired(a[m], b[m])["verdict"] == "better"
        assert iv.paired(b[m], a[m])["verdict"] == "worse"
    assert iv.verdict(-0.01, 0.02) == "indistinguishable"


def test_record_fields_round_trip_and_follow_the_schema():
    scores, labels, maps, masks = _small_case(size=16)
    fields = json.loads(json.dumps(iv.uncertainty_fields(scores, labels, maps, masks)))
    ci = fields["intervals"]
    assert ci["n_resamples"] == 1000 and ci["seed"] == 0 and ci["level"] == 0.95
    for m in iv.METRICS:
        assert 0.0 <= ci[m][0] <= ci[m][1] <= 1.0
    hist = iv.PixelHistograms.from_record(fields["pixel_histograms"])
    direct = iv.pixel_histograms(maps, masks)
    assert np.array_equal(hist.normal, direct.normal) and np.array_equal(hist.components, direct.components)
    assert np.array_equal(hist.edges, direct.edges)
    record = {"config": {"method": {"name": "m"}, "dataset": {"name": "d"}, "category": "c", "seed": 0},
              "per_image": {"score": scores.tolist(), "label": labels.tolist()}, **fields}
    assert record_problem(record) is None
    again = iv.record_resamples(record)
    assert np.array_equal(again["aupro"], iv.resample_values(scores, labels, direct)["aupro"])
    bad = {**record, "intervals": {**ci, "image_auroc": [0.2, 1.5]}}
    assert "intervals.image_auroc" in record_problem(bad)
    # image-only: no maps, no pixel intervals
    only = iv.uncertainty_fields(scores, labels, None, None)
    assert only["pixel_histograms"] is None and only["intervals"]["pixel_auroc"] is None
    assert only["intervals"]["image_auroc"] is not None
