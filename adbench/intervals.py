"""How sure a number is: bootstrap intervals over test images, DeLong's interval, paired differences.

Every metric is recomputed on ``n_resamples`` resamples of the test set. A resample draws, with replacement, as
many good images from the good ones and as many defective images from the defective ones as the test set holds
(stratified, whole images: an image's pixels stay together). The draws depend only on the labels, the seed and
the number of resamples (:func:`resample_indices`), so two methods scored on the same test images see the same
resamples and their difference has an interval of its own (:func:`paired`).

Image AUROC and F1-max are exact on every resample (vectorised over resamples). Pixel AUROC and AUPRO come from
compact per-image histograms of the anomaly map (:class:`PixelHistograms`, stored in the run record): the
thresholds are quantiles of the normal-pixel scores, dense up to the AUPRO's FPR limit, so a resample's pixel
counts are one matrix product of how often each image was drawn with the per-image counts. Within one bin the
order of a normal and an anomalous pixel is unknown; :func:`pixel_resamples` returns, per resample, a strict
bound on how far the binned value can be from the exact one (measured: ``benchmarks/intervals.py``). When every
bin holds one distinct score the binned values are exact.
"""

from __future__ import annotations

import base64
import lzma
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import norm, rankdata

DEFAULT_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed, not the run's seed: every run on the same test images sees the same resamples
LEVEL = 0.95
TOO_WIDE = 0.10  # a test-set interval wider than this (10 points) is too wide to rank methods by
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")
VERDICTS = ("better", "indistinguishable", "worse")
DESCRIPTION = "stratified percentile bootstrap over test images (good / defective resampled apart, whole images)"


# ---------------------------------------------------------------------------------------------------- resamples


def resample_indices(labels: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[n_resamples, N] test-image indices: per row the good images drawn from the good ones, then the defective
    drawn from the defective ones, uniformly with replacement (``numpy.random.default_rng(seed)``, good first)."""
    labels = np.asarray(labels).astype(int).reshape(-1)
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    rng = np.random.default_rng(seed)
    parts = [group[rng.integers(0, len(group), size=(n_resamples, len(group)))] for group in (good, bad) if len(group)]
    return np.concatenate(parts, axis=1) if parts else np.zeros((n_resamples, 0), dtype=np.int64)


def draw_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """[B, n] float64: how often each test image is drawn in each resample."""
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def image_auroc_resamples(scores: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Image AUROC of every resample (Mann-Whitney from average ranks; ties count one half). NaN when a class
    is missing."""
    s = np.asarray(scores, dtype=np.float64)[idx]
    lab = np.asarray(labels).astype(bool)[idx]
    n_pos = lab.sum(axis=1).astype(np.float64)
    n_neg = lab.shape[1] - n_pos
    ranks = rankdata(s, axis=1)  # average ranks: a tie of a positive and a negative counts 0.5
    u = (ranks * lab).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def f1_max_resamples(scores: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Best F1 over all thresholds (score >= threshold is anomalous) of every resample; NaN without a defect."""
    s = np.asarray(scores, dtype=np.float64)[idx]
    lab = np.asarray(labels).astype(np.float64)[idx]
    order = np.argsort(-s, axis=1, kind="stable")
    s = np.take_along_axis(s, order, axis=1)
    lab = np.take_along_axis(lab, order, axis=1)
    tp = np.cumsum(lab, axis=1)
    called = np.arange(1, s.shape[1] + 1, dtype=np.float64)  # tp + fp
    n_pos = tp[:, -1:]
    last = np.ones_like(s, dtype=bool)  # a threshold sits after the last of a group of tied scores
    last[:, :-1] = s[:, :-1] != s[:, 1:]
    f1 = np.where(last, 2 * tp / (called + n_pos), 0.0)  # 2PR / (P + R) = 2 tp / (tp + fp + positives)
    return np.where(n_pos[:, 0] > 0, f1.max(axis=1), np.nan)


# ------------------------------------------------------------------------------------------------------ DeLong


def delong(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(AUROC, DeLong's variance of it) from the structural components: V10 per defective image (the share of
    good images it outscores, ties one half), V01 per good image (the share of defective images that outscore
    it); variance = var(V10) / m + var(V01) / n (sample variances, m defective and n good images)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).astype(bool).reshape(-1)
    pos, neg = s[lab], s[~lab]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    all_ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - rankdata(pos)) / n  # good images below each defective one (+ half the ties)
    v01 = 1.0 - (all_ranks[m:] - rankdata(neg)) / m  # defective images above each good one
    auc = float(v10.mean())
    s10 = float(np.var(v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n > 1 else 0.0
    return auc, s10 / m + s01 / n


def delong_interval(scores: np.ndarray, labels: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """AUROC ± z sqrt(DeLong variance), clipped to [0, 1]; None when a class is missing."""
    auc, var = delong(scores, labels)
    if math.isnan(auc):
        return None
    half = float(norm.ppf(0.5 + level / 2)) * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


# ---------------------------------------------------------------------------------------------- pixel metrics


@dataclass
class PixelHistograms:
    """Per-image pixel counts in the bins of one threshold list, enough for pixel AUROC and AUPRO of any resample.

    ``edges`` [K] ascending thresholds (float32 map values); bin ``j`` holds scores in ``(edges[j-1], edges[j]]``,
    bin 0 everything up to ``edges[0]``, bin K everything above ``edges[-1]`` (the highest normal score, so no
    normal pixel is there). ``normal`` [N, K+1]: each test image's normal pixels per bin. ``components``
    [C, K+1]: the pixels of each connected ground-truth region (8-connectivity) per bin, ``component_image`` [C]
    the image it is in."""

    edges: np.ndarray
    normal: np.ndarray
    components: np.ndarray
    component_image: np.ndarray

    @property
    def n_images(self) -> int:
        return int(self.normal.shape[0])

    def to_record(self) -> dict[str, Any]:
        """Compact JSON: little-endian arrays, LZMA-compressed, base64 (about 40 KB for bottle at 224 px)."""
        top = int(max(self.normal.max(initial=0), self.components.max(initial=0)))
        dtype = "<u2" if top <= np.iinfo(np.uint16).max else "<u4"
        return {"bins": int(len(self.edges) + 1), "n_images": self.n_images,
                "n_components": int(len(self.component_image)), "count_dtype": dtype,
                "edges": _pack(self.edges.astype("<f4")), "normal": _pack(self.normal.astype(dtype)),
                "components": _pack(self.components.astype(dtype)),
                "component_image": _pack(self.component_image.astype("<u4"))}

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "PixelHistograms":
        """The inverse of :meth:`to_record`; ValueError when the arrays do not fit together."""
        bins, n, c, dtype = int(d["bins"]), int(d["n_images"]), int(d["n_components"]), str(d["count_dtype"])
        h = cls(edges=_unpack(d["edges"], "<f4", (bins - 1,)), normal=_unpack(d["normal"], dtype, (n, bins)),
                components=_unpack(d["components"], dtype, (c, bins)),
                component_image=_unpack(d["component_image"], "<u4", (c,)).astype(np.int64))
        if c and h.component_image.max() >= n:
            raise ValueError("pixel_histograms: a component names an image that is not there")
        return h


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(lzma.compress(np.ascontiguousarray(a).tobytes(), preset=6)).decode("ascii")


def _unpack(text: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    a = np.frombuffer(lzma.decompress(base64.b64decode(text)), dtype=dtype)
    if a.size != int(np.prod(shape)):
        raise ValueError(f"pixel_histograms: {a.size} values where {shape} were expected")
    return a.reshape(shape)


def threshold_grid(normal_scores: np.ndarray, fpr_limit: float = 0.3, n_low: int = 600,
                   n_high: int = 200) -> np.ndarray:
    """Ascending float32 thresholds: the normal-pixel scores at FPR 0, 1/``n_low`` of ``fpr_limit``, ... (dense
    where AUPRO is integrated), then ``n_high`` steps from ``fpr_limit`` to 1, and one just below the lowest
    normal score (so that the last AUPRO segment ends where the exact curve does). ``normal_scores`` is sorted
    in place."""
    neg = np.asarray(normal_scores, dtype=np.float32).reshape(-1)
    neg.sort()
    n = len(neg)
    fprs = np.concatenate([np.linspace(0.0, fpr_limit, n_low + 1), np.linspace(fpr_limit, 1.0, n_high + 1)])
    k = np.clip(np.ceil((1.0 - fprs) * n).astype(np.int64) - 1, 0, n - 1)  # a fraction fpr of normals lie above
    below = np.nextafter(neg[0], np.float32(-np.inf))
    return np.unique(np.concatenate([[below], neg[k]]).astype(np.float32))


def pixel_histograms(maps: np.ndarray, masks: np.ndarray, edges: np.ndarray | None = None,
                     fpr_limit: float = 0.3) -> PixelHistograms | None:
    """The per-image histograms of ``maps`` [N, H, W] against ``masks`` (default thresholds:
    :func:`threshold_grid`); None when the masks hold one class only."""
    m = np.asarray(masks, dtype=bool)
    a = np.asarray(maps, dtype=np.float32)
    if not m.any() or m.all():
        return None
    edges = threshold_grid(a[~m], fpr_limit) if edges is None else np.unique(np.asarray(edges, dtype=np.float32))
    bins = len(edges) + 1
    structure = np.ones((3, 3), dtype=bool)
    normal = np.zeros((len(a), bins), dtype=np.int64)
    comps, comp_image = [], []
    for i in range(len(a)):
        b = np.searchsorted(edges, a[i].ravel(), side="left")  # bin j: edges[j-1] < v <= edges[j]
        mi = m[i].ravel()
        normal[i] = np.bincount(b[~mi], minlength=bins)
        if mi.any():
            lab, n_comp = ndimage.label(m[i], structure=structure)
            lab = lab.ravel()[mi]
            comps.append(np.bincount((lab - 1) * bins + b[mi], minlength=n_comp * bins).reshape(n_comp, bins))
            comp_image += [i] * n_comp
    components = np.concatenate(comps) if comps else np.zeros((0, bins), dtype=np.int64)
    return PixelHistograms(edges=edges, normal=normal, components=components,
                           component_image=np.asarray(comp_image, dtype=np.int64))


def pixel_resamples(h: PixelHistograms, counts: np.ndarray, fpr_limit: float = 0.3) -> dict[str, np.ndarray]:
    """Per resample (``counts`` [B, N] from :func:`draw_counts`): ``pixel_auroc`` and ``aupro`` from the bins, and
    ``pixel_auroc_bound`` / ``aupro_bound``, a strict bound on their distance to the exact values.

    Pixel AUROC: an anomalous pixel counts the normal pixels in lower bins and half of those in its own bin; the
    exact value differs only by the order inside a bin, at most half of the same-bin pairs. AUPRO: (FPR, PRO) at
    every threshold, joined by straight lines up to ``fpr_limit`` (as the exact curve joins tied scores); between
    two thresholds the exact curve rises monotonically, so each segment is off by at most half its box (the one
    crossing the limit: its whole box)."""
    c = np.asarray(counts, dtype=np.float64)
    neg = c @ h.normal.astype(np.float64)  # [B, K+1] normal pixels per bin
    cc = c[:, h.component_image]  # [B, C] how often each region is drawn
    comp = h.components.astype(np.float64)
    pos = cc @ comp  # [B, K+1] anomalous pixels per bin
    n_neg, n_pos = neg.sum(axis=1), pos.sum(axis=1)
    lower = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        pairs = n_neg * n_pos
        auroc = (pos * (lower + 0.5 * neg)).sum(axis=1) / pairs
        auroc_bound = 0.5 * (pos * neg).sum(axis=1) / pairs

        # above threshold j = bins j+1 .. K; thresholds from the highest down: FPR and PRO rise
        neg_above = (n_neg[:, None] - np.cumsum(neg, axis=1))[:, :-1][:, ::-1]  # [B, K]
        area = comp.sum(axis=1)
        frac_above = ((area[:, None] - np.cumsum(comp, axis=1)) / area[:, None])[:, :-1][:, ::-1]  # [C, K]
        n_regions = cc.sum(axis=1)
        fpr = np.concatenate([neg_above / n_neg[:, None], np.ones((len(c), 1))], axis=1)
        pro = np.concatenate([(cc @ frac_above) / n_regions[:, None], np.ones((len(c), 1))], axis=1)
        f0, f1, p0, p1 = fpr[:, :-1], fpr[:, 1:], pro[:, :-1], pro[:, 1:]
        end = np.minimum(f1, fpr_limit)
        width = np.clip(end - f0, 0.0, None)
        step = np.where(f1 > f0, (p1 - p0) / np.where(f1 > f0, f1 - f0, 1.0), 0.0)
        p_end = p0 + step * (end - f0)
        aupro = np.minimum(1.0, (width * (p0 + p_end) / 2).sum(axis=1) / fpr_limit)
        aupro_bound = (width * (p1 - p0) * np.where(f1 <= fpr_limit, 0.5, 1.0)).sum(axis=1) / fpr_limit
    return {"pixel_auroc": auroc, "aupro": aupro, "pixel_auroc_bound": auroc_bound, "aupro_bound": aupro_bound}


# ---------------------------------------------------------------------------------------------- the bootstrap


def resample_values(scores: np.ndarray, labels: np.ndarray, hist: PixelHistograms | None = None,
                    n_resamples: int = DEFAULT_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                    fpr_limit: float = 0.3) -> dict[str, np.ndarray]:
    """Every metric on every resample: ``image_auroc``, ``image_f1_max`` and, with ``hist``, ``pixel_auroc``,
    ``aupro`` and their error bounds; arrays [n_resamples], same resamples for the same labels and seed."""
    labels = np.asarray(labels).astype(int).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    idx = resample_indices(labels, n_resamples, seed)
    out = {"image_auroc": image_auroc_resamples(scores, labels, idx),
           "image_f1_max": f1_max_resamples(scores, labels, idx)}
    if hist is not None:
        if hist.n_images != len(labels):
            raise ValueError(f"pixel histograms of {hist.n_images} images for {len(labels)} test images")
        out.update(pixel_resamples(hist, draw_counts(idx, len(labels)), fpr_limit))
    return out


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """(low, high): the (1 - level) / 2 and (1 + level) / 2 quantiles (linear); None when any value is NaN."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or np.isnan(v).any():
        return None
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> dict[str, Any] | None:
    """The interval of ``a - b`` on the same resamples and the verdict: ``better`` (above 0), ``worse`` (below
    0) or ``indistinguishable``. None when either has no value."""
    ci = percentile_interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), level)
    if ci is None:
        return None
    return {"low": ci[0], "high": ci[1], "verdict": verdict(*ci)}


def verdict(low: float, high: float) -> str:
    """``better`` when the interval of a difference lies above 0, ``worse`` below, else ``indistinguishable``."""
    return "better" if low > 0 else "worse" if high < 0 else "indistinguishable"


def record_intervals(scores: np.ndarray, labels: np.ndarray, hist: PixelHistograms | None,
                     n_resamples: int = DEFAULT_RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL,
                     fpr_limit: float = 0.3) -> dict[str, Any]:
    """The record's ``intervals``: [low, high] per metric (null where undefined or without maps), DeLong's
    interval of image AUROC, how they were made, the largest pixel error bound over the resamples and the
    seconds it took."""
    t0 = time.perf_counter()
    vals = resample_values(scores, labels, hist, n_resamples, seed, fpr_limit)
    out: dict[str, Any] = {"method": DESCRIPTION, "level": level, "n_resamples": n_resamples, "seed": seed}
    for m in METRICS:
        ci = percentile_interval(vals[m], level) if m in vals else None
        out[m] = None if ci is None else [_unit(ci[0]), _unit(ci[1])]
    dl = delong_interval(scores, labels, level)
    out["image_auroc_delong"] = None if dl is None else [_unit(dl[0]), _unit(dl[1])]
    out["pixel_error_bound"] = None if hist is None else {
        k: float(np.nanmax(vals[f"{k}_bound"])) if np.isfinite(vals[f"{k}_bound"]).any() else None
        for k in ("pixel_auroc", "aupro")}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _unit(v: float) -> float:
    return float(min(1.0, max(0.0, v)))


def uncertainty_fields(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray | None,
                       masks: np.ndarray | None) -> dict[str, Any]:
    """What a new run record stores for its intervals and paired comparisons: ``pixel_histograms`` (None without
    masks) and ``intervals`` (its ``seconds`` include building the histograms)."""
    t0 = time.perf_counter()
    hist = pixel_histograms(maps, masks) if maps is not None and masks is not None else None
    t1 = time.perf_counter()
    intervals = record_intervals(scores, labels, hist)
    intervals["seconds"] = round(intervals["seconds"] + t1 - t0, 3)
    return {"pixel_histograms": None if hist is None else hist.to_record(), "intervals": intervals}


# ------------------------------------------------------------------------------------------------ from records


def record_resamples(rec: dict[str, Any], n_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict[str, np.ndarray]:
    """Resample values of a run record: image metrics from ``per_image`` (every record that has it), pixel
    metrics from ``pixel_histograms`` (records written since they exist); {} without per-image scores."""
    per = rec.get("per_image") or {}
    scores, labels = per.get("score") or [], per.get("label") or []
    if not scores or len(scores) != len(labels):
        return {}
    raw = rec.get("pixel_histograms")
    hist = PixelHistograms.from_record(raw) if raw else None
    return resample_values(np.asarray(scores), np.asarray(labels), hist, n_resamples, seed)


def pairing_key(rec: dict[str, Any]) -> tuple:
    """What two records must share for a paired comparison: the test files and labels, in order."""
    per = rec.get("per_image") or {}
    return tuple(per.get("file") or []), tuple(per.get("label") or [])
