"""The two reference baselines: exact statistics, exact maps, and their known level on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from adbench.api import RunContext
from adbench.data.transforms import normalize
from adbench.registry import get_method

from .conftest import REAL_CATEGORIES, real_baseline_metrics


def _loader(images: torch.Tensor, batch: int = 3):
    x = normalize(images)
    return [{"image": x[i:i + batch], "path": [f"{j}.png" for j in range(i, min(i + batch, len(x)))]}
            for i in range(0, len(x), batch)]


def _make(name: str, **cfg):
    base = {"name": name, "smoothing_sigma": 0, "eps": 0.01}
    return get_method(name)(OmegaConf.create({**base, **cfg}), RunContext(progress=False))


def test_statistics_are_the_per_pixel_mean_and_std():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(7, 3, 8, 10, generator=g, dtype=torch.float64).float()
    m = _make("pixel_gaussian")
    m.fit(_loader(train))
    x = train.double()
    # normalize -> denormalize round trip costs float32 rounding only
    assert torch.allclose(m.mean, x.mean(0), atol=1e-6)
    assert torch.allclose(m.std, x.std(0, unbiased=False), atol=1e-5)


@pytest.mark.parametrize("name", ["mean_image", "pixel_gaussian"])
def test_map_formula_and_max_score(name):
    g = torch.Generator().manual_seed(1)
    train = torch.rand(9, 3, 6, 6, generator=g)
    test = torch.rand(4, 3, 6, 6, generator=g)
    m = _make(name)
    m.fit(_loader(train))
    pred = m.predict(_loader(test))
    x = test.double()
    mu, sd = train.double().mean(0), train.double().std(0, unbiased=False)
    want = ((x - mu) ** 2).sum(1).sqrt() if name == "mean_image" else (((x - mu) / (sd + 0.01)) ** 2).mean(1).sqrt()
    np.testing.assert_allclose(pred.anomaly_maps, want.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pred.image_scores, want.flatten(1).max(1).values.numpy(), rtol=1e-4, atol=1e-4)


def test_a_painted_defect_is_the_maximum_of_the_map():
    train = torch.full((5, 3, 32, 32), 0.5) + 0.01 * torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    test = train[:2].clone()
    test[1, :, 10:14, 20:24] = 1.0
    m = _make("pixel_gaussian", smoothing_sigma=2)
    m.fit(_loader(train))
    pred = m.predict(_loader(test))
    assert pred.image_scores[1] > 10 * pred.image_scores[0]
    r, c = np.unravel_index(pred.anomaly_maps[1].argmax(), (32, 32))
    assert 9 <= r <= 14 and 19 <= c <= 24


@pytest.mark.parametrize("category", REAL_CATEGORIES)
def test_real_levels(category):
    """The level every other method is judged against. On bottle the raw-pixel Gaussian is a strong localiser
    (pixel AUROC about 0.92 at 224 px with sigma 4): a method below it is not using anything a per-pixel statistic does not."""
    pg = real_baseline_metrics(category, "pixel_gaussian")
    mi = real_baseline_metrics(category, "mean_image")
    for m in (pg, mi):
        assert set(m) >= {"image_auroc", "pixel_auroc", "aupro"}
    if category == "bottle":
        assert pg["pixel_auroc"] > 0.90 and pg["pixel_auroc"] > mi["pixel_auroc"] and pg["image_auroc"] > 0.95
    assert pg["image_auroc"] > 0.5 and pg["pixel_auroc"] > 0.5
