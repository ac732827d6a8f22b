"""Property-based tests (hypothesis): metric invariances and ranges, the loader against random bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from adbench.data import DataError
from adbench.data.mvtec import _check_image, load_image
from adbench.evaluate import aupro, image_auroc, pixel_auroc

# strictly increasing maps that keep distinct integer scores distinct in float32 and float64
INCREASING = {
    "exp": lambda x: np.exp(x / 10.0),
    "cube": lambda x: x**3,
    "affine": lambda x: 2.5 * x + 7.0,
    "arctan": lambda x: np.arctan(x / 20.0),
}

scores_and_labels = st.integers(2, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-50, 50), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n),
))


@settings(max_examples=150, deadline=None)
@given(scores_and_labels, st.sampled_from(sorted(INCREASING)))
def test_auroc_invariant_to_increasing_transforms_and_in_unit_interval(data, fname):
    s, y = np.array(data[0], dtype=np.float64), np.array(data[1])
    assume(y.any() and not y.all())
    t = INCREASING[fname](s)
    a = image_auroc(s, y)
    assert 0.0 <= a <= 1.0
    assert image_auroc(t, y) == pytest.approx(a, abs=1e-12)
    # the pixel AUROC (sorted-merge implementation) obeys the same and equals sklearn's, ties included
    p = pixel_auroc(s[None, None, :], y[None, None, :])
    assert p == pytest.approx(a, abs=1e-9) and p == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert pixel_auroc(t[None, None, :], y[None, None, :]) == pytest.approx(p, abs=1e-9)


def _maps_and_masks(seed: int, n: int, size: int, n_blobs: int) -> tuple[np.ndarray, np.ndarray]:
    """Random score maps [n, size, size] and masks of random rectangles (at least one anomalous pixel)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for _ in range(n_blobs):
        i = rng.integers(n)
        y0, x0 = rng.integers(0, size - 1, size=2)
        h, w = rng.integers(1, size // 2 + 1, size=2)
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
    maps = rng.normal(size=masks.shape).astype(np.float32) + masks * rng.uniform(-1, 2)
    return maps, masks


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(4, 24), st.integers(1, 6))
def test_aupro_in_unit_interval_and_one_for_a_perfect_map(seed, n, size, n_blobs):
    maps, masks = _maps_and_masks(seed, n, size, n_blobs)
    assume(not masks.all())
    a = aupro(maps, masks)
    assert 0.0 <= a <= 1.0
    # perfect: every anomalous pixel above every normal one (noisy within each class, or tied)
    rng = np.random.default_rng(seed + 1)
    perfect = np.where(masks, 0.6 + 0.4 * rng.random(masks.shape), 0.4 * rng.random(masks.shape)).astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-9)
    assert aupro(masks.astype(np.float32), masks) == pytest.approx(1.0, abs=1e-9)
    # and a map that ranks in reverse stays in range
    assert 0.0 <= aupro(-perfect, masks) <= 1.0


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("random_png")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=4096), st.booleans())
def test_loader_rejects_random_bytes_named_png(scratch, data, with_signature):
    path = scratch / "random.png"
    path.write_bytes((b"\x89PNG\r\n\x1a\n" if with_signature else b"") + data)
    for check in (_check_image, load_image):
        with pytest.raises(DataError) as info:
            check(path)
        msg = str(info.value)
        assert msg.startswith(f"unreadable or truncated image: {path} (") and "replace or remove the file" in msg
        assert "\n" not in msg
