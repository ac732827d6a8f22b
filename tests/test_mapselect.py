"""Per-run choice of the map kind (adbench.mapselect) and the unaligned copies it is tested on (adbench.data.unaligned)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adbench.data.errors import DataError
from adbench.data.mvtec import scan_split
from adbench.data.unaligned import MARKER, make_unaligned, move
from adbench.mapselect import choose_map_kind, paste_anomalies


def test_paste_anomalies_is_deterministic_and_touches_only_the_mask():
    images = torch.rand(6, 3, 32, 32)
    a, ma = paste_anomalies(images, seed=3)
    b, mb = paste_anomalies(images, seed=3)
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert ma.shape == (6, 32, 32) and bool(ma.flatten(1).any(1).all())  # one anomaly per image
    outside = ~ma[:, None].expand_as(images)
    assert torch.equal(a[outside], images[outside])
    assert (a[ma[:, None].expand_as(images)] != images[ma[:, None].expand_as(images)]).float().mean() > 0.5
    assert not torch.equal(paste_anomalies(images, seed=4)[1], ma)


def _stripes(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Aligned normal images [n, 1, size, size]: bright stripes at fixed rows on a dark noisy canvas."""
    g = np.random.default_rng(seed)
    img = np.full((n, 1, size, size), 0.1) + g.normal(0, 0.02, (n, 1, size, size))
    img[:, :, ::4] = 0.95
    return torch.tensor(img, dtype=torch.float32).clamp(0, 1)


def _image_is_the_error(images, seen=None):
    """Candidates where the image is the model's output: its raw value, or its absolute per-pixel z-score against
    statistics of other normal images (which ignores the fixed stripes). ``seen`` collects the fitted images."""
    def fit_stats(x):
        if seen is not None:
            seen.append(x.clone())
        e = x[:, 0].numpy()
        return e.mean(0), np.maximum(e.std(0), 0.1 * e.std(0).mean())

    def maps(x, st):
        e = x[:, 0].numpy()
        return {"standardised": np.abs(e - st[0]) / st[1], "raw": e, "noise": np.random.default_rng(0).random(e.shape)}

    return fit_stats, maps


def _max(m):
    return m.reshape(len(m), -1).max(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_kind_that_finds_the_synthetic_anomalies_is_chosen(seed):
    images = _stripes(20, seed)
    seen: list[torch.Tensor] = []
    sel = choose_map_kind(images, ["raw", "standardised", "noise"], *_image_is_the_error(images, seen), _max, seed=seed)
    assert sel.chosen == "standardised", sel  # the fixed stripes are normal: only the z-score ignores them
    assert sel.pixel_auroc["standardised"] > sel.pixel_auroc["raw"] + 0.05
    assert abs(sel.pixel_auroc["noise"] - 0.5) < 0.05
    for kind in sel.score:  # what is compared: the mean of the two AUROCs
        assert sel.score[kind] == pytest.approx((sel.pixel_auroc[kind] + sel.image_auroc[kind]) / 2)
    # two-fold cross-fitting: each half is scored against statistics of the other half only
    assert len(seen) == 2 and len(seen[0]) + len(seen[1]) == 20
    rows = lambda t: {tuple(r.flatten().tolist()) for r in t}  # noqa: E731
    assert not rows(seen[0]) & rows(seen[1])
    rec = json.loads(json.dumps(sel.to_dict()))  # what the run record holds
    assert rec["chosen"] == "standardised" and set(rec["pixel_auroc"]) == {"raw", "standardised", "noise"}
    assert rec["n_images"] == 20 and "synthetic anomalies" in rec["criterion"]


def test_the_default_kind_wins_unless_another_beats_it_by_the_margin():
    images = _stripes(20, 0)
    fit_stats, maps = _image_is_the_error(images)
    sel = choose_map_kind(images, ["raw", "standardised"], fit_stats, maps, _max, seed=0, margin=0.99)
    assert sel.chosen == "raw" and sel.score["standardised"] > sel.score["raw"]


def test_too_few_held_out_images_keep_the_default_kind():
    sel = choose_map_kind(_stripes(3, 0), ["raw", "standardised"], *_image_is_the_error(None), _max, seed=0)
    assert sel.chosen == "raw" and not sel.score and "fewer than 4" in sel.criterion


def test_move_keeps_the_mask_on_the_object():
    img = np.zeros((64, 64), np.uint8)
    img[10:30, 35:50] = 255  # the "defect" is the mask itself
    for pose in [(37.0, 0.1, -0.05), (-150.0, -0.1, 0.1), (90.0, 0.0, 0.0)]:
        moved_img = np.asarray(move(Image.fromarray(img).convert("RGB"), pose, 64))[..., 0] > 127
        moved_mask = np.asarray(move(Image.fromarray(img), pose, 64, mask=True)) > 0
        iou = (moved_img & moved_mask).sum() / (moved_img | moved_mask).sum()
        assert iou > 0.85, (pose, iou)
        assert set(np.unique(np.asarray(move(Image.fromarray(img), pose, 64, mask=True)))) <= {0, 255}


def _tiny_category(root, name="widget"):
    cdir = root / name
    for sub in ("train/good", "test/good", "test/dent", "ground_truth/dent"):
        (cdir / sub).mkdir(parents=True)
    g = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(g.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(cdir / f"train/good/{i:03d}.png")
    Image.fromarray(g.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(cdir / "test/good/000.png")
    Image.fromarray(g.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(cdir / "test/dent/000.png")
    m = np.zeros((40, 40), np.uint8)
    m[5:15, 5:15] = 255
    Image.fromarray(m).save(cdir / "ground_truth/dent/000_mask.png")
    return cdir


def test_unaligned_copy_has_the_layout_and_never_replaces_a_foreign_folder(tmp_path):
    _tiny_category(tmp_path / "src")
    out = make_unaligned(tmp_path / "src", "widget", tmp_path / "out", seed=1, size=32)
    assert (out / MARKER).is_file()
    test = scan_split(out, "test")
    assert len(scan_split(out, "train")) == 3 and len(test) == 2
    mask = np.asarray(Image.open([s for s in test if s.mask_path][0].mask_path))
    assert mask.shape == (32, 32) and mask.any()
    stamp = (out / MARKER).stat().st_mtime_ns
    assert make_unaligned(tmp_path / "src", "widget", tmp_path / "out", seed=1, size=32) == out  # same settings: kept
    assert (out / MARKER).stat().st_mtime_ns == stamp
    make_unaligned(tmp_path / "src", "widget", tmp_path / "out", seed=2, size=32)  # other settings: replaced
    assert json.loads((out / MARKER).read_text())["seed"] == 2
    user = tmp_path / "mine" / "widget"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not an unaligned copy"):
        make_unaligned(tmp_path / "src", "widget", tmp_path / "mine")
    assert (user / "notes.txt").read_text() == "keep"
