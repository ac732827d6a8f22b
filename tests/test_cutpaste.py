"""CutPaste: augmentation geometry, densities against scikit-learn, localisation maps, training resume, e2e."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from adbench.api import RunContext
from adbench.data.errors import ConfigError
from adbench.run import build_datamodule
from methods.cutpaste.augment import (AugmentConfig, color_jitter, cutpaste, make_views, random_translate,
                                      sample_cutpaste_box, scar)
from methods.cutpaste.density import GaussianDensity, KernelDensity, SklearnGaussianDensity, density_from_state, ledoit_wolf
from methods.cutpaste.localise import extract_patches, grid_shape, patches_at, scores_to_map
from methods.cutpaste.method import CutPaste
from methods.cutpaste.model import CutPasteNet, build_encoder, freeze_before, strip_classifier
from methods.cutpaste.train import TrainConfig, batch_indices, train_cutpaste

from .conftest import compose_cfg, small_synthetic_overrides


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- augmentations


@pytest.mark.parametrize("side", [64, 224])
def test_cutpaste_box_area_and_aspect_bounds(side):
    cfg, g = AugmentConfig(), _gen(1)
    boxes = [sample_cutpaste_box(side, side, cfg, g) for _ in range(400)]
    area = np.array([bh * bw / side**2 for bh, bw in boxes])
    aspect = np.array([bw / bh for bh, bw in boxes])
    assert area.min() >= 0.02 and area.max() <= 0.15
    assert ((aspect > 0.3) & (aspect < 3.3) & (aspect != 1.0)).all()
    # both halves of the aspect range and most of the area range are used
    assert (aspect < 1).mean() > 0.3 and (aspect > 1).mean() > 0.3
    assert aspect.min() < 0.45 and aspect.max() > 2.5 and area.min() < 0.03 and area.max() > 0.13


def test_cutpaste_pastes_source_piece_elsewhere_and_changes_only_there():
    g = _gen(2)
    img = torch.rand(3, 96, 96, generator=g)
    for _ in range(20):
        out, info = cutpaste(img, AugmentConfig(patch_jitter=0.0), g)
        (bh, bw), (y1, x1), (y2, x2) = info["box"], info["src"], info["dst"]
        assert (y1, x1) != (y2, x2)
        assert torch.equal(out[:, y2 : y2 + bh, x2 : x2 + bw], img[:, y1 : y1 + bh, x1 : x1 + bw])
        changed = (out != img).any(0)
        assert changed.any() and not (changed & ~info["mask"]).any()
    jittered, info = cutpaste(img, AugmentConfig(patch_jitter=0.3), g)
    assert (jittered != img)[:, info["mask"]].any()


def _principal_angle(mask: torch.Tensor) -> float:
    """Angle (degrees, from vertical, in (-90, 90]) of the long axis of a binary mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    ev, evec = torch.linalg.eigh(torch.cov(torch.stack([xs.double(), ys.double()])))
    vx, vy = evec[:, 1].tolist()
    ang = math.degrees(math.atan2(vx, vy))
    return ang - 180 if ang > 90 else ang + 180 if ang <= -90 else ang


def test_scar_width_length_rotation_bounds_and_geometry():
    g = _gen(3)
    img = torch.rand(3, 64, 64, generator=g)
    angles = []
    for _ in range(200):
        out, info = scar(img, AugmentConfig(), g)
        w, length, angle = info["width"], info["length"], info["angle"]
        assert 2 <= w <= 16 and 10 <= length <= 25 and -45 <= angle <= 45
        angles.append(angle)
        area = int(info["mask"].sum())
        assert abs(area - w * length) <= 0.15 * w * length + 4  # a rotated strip keeps its area
        changed = (out != img).any(0)
        assert changed.any() and not (changed & ~info["mask"]).any()
        if length >= 2.5 * w:  # long and thin: its long axis has the drawn rotation
            assert abs(_principal_angle(info["mask"]) - angle) < 6
    assert min(angles) < -35 and max(angles) > 35


def test_scar_pastes_only_strip_pixels_no_dark_outline():
    # a uniform 0.8 image without jitter: every pasted pixel must still be 0.8 (a bilinear rotation with zero
    # fill mixed the strip's edge pixels with black)
    g = _gen(10)
    img = torch.full((3, 64, 64), 0.8)
    cfg = AugmentConfig(patch_jitter=0.0)
    for _ in range(200):
        out, info = scar(img, cfg, g)
        assert info["mask"].sum() >= info["width"] * info["length"] * 0.8
        assert torch.equal(out, img), (out - img).abs().max()
    # the pasted pixels are the strip's: a striped image keeps only values of its source rows inside the mask
    ramp = torch.linspace(0.1, 0.9, 64).view(1, 64, 1).expand(3, 64, 64).contiguous()
    for _ in range(50):
        out, info = scar(ramp, cfg, g)
        (y1, _), length = info["src"], info["length"]
        src_values = set(ramp[0, y1 : y1 + length, 0].tolist())
        assert set(out[0][info["mask"]].tolist()) <= src_values


def test_color_jitter_is_torchvision_colorjitter_per_image():
    from torchvision.transforms.v2 import ColorJitter

    x = torch.rand(3, 3, 12, 12, generator=_gen(11))
    g1, g2 = _gen(12), _gen(12)
    out = color_jitter(x, 0.3, g1)
    seed = int(torch.randint(0, 2**62, (1,), generator=g2))
    torch.manual_seed(seed)
    ref = ColorJitter(0.3, 0.3, 0.3, 0.3)
    assert torch.allclose(out, torch.stack([ref(img) for img in x]).clamp(0, 1))
    same = color_jitter(x[:1].expand(2, 3, 12, 12), 0.3, g1)
    assert not torch.allclose(same[0], same[1])  # each image draws its own factors


def test_color_jitter_range_identity_and_gray_invariance():
    g = _gen(4)
    x = torch.rand(5, 3, 16, 16, generator=g)
    assert torch.equal(color_jitter(x, 0.0, g), x)
    y = color_jitter(x, 0.4, g)
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(x, y)
    gray = torch.rand(4, 1, 8, 8, generator=g).expand(4, 3, 8, 8) * 0.5 + 0.2
    out = color_jitter(gray, 0.2, g)  # brightness/contrast may change, a gray image stays gray
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)


def test_random_translate_shifts_within_bound():
    g = _gen(5)
    x = torch.rand(3, 3, 40, 40, generator=g)
    y = random_translate(x, 0.1, g)
    assert y.shape == x.shape
    for i in range(3):  # the centre of the shifted image is the original shifted by at most 4 px
        ok = any(torch.equal(y[i, :, 8:32, 8:32], x[i, :, 8 - dy : 32 - dy, 8 - dx : 32 - dx])
                 for dy in range(-4, 5) for dx in range(-4, 5))
        assert ok
    assert torch.equal(random_translate(x, 0.0, g), x)


@pytest.mark.parametrize("variant,k", [("normal", 2), ("scar", 2), ("3way", 3)])
def test_make_views_labels(variant, k):
    x = torch.rand(4, 3, 64, 64, generator=_gen(6))
    views, labels = make_views(x, variant, AugmentConfig(), _gen(7))
    assert views.shape == (k * 4, 3, 64, 64) and labels.tolist() == [c for c in range(k) for _ in range(4)]
    again, _ = make_views(x, variant, AugmentConfig(), _gen(7))
    assert torch.equal(views, again)  # deterministic given the generator
    with pytest.raises(ConfigError, match="method.variant"):
        make_views(x, "4way", AugmentConfig(), _gen(7))


# ---------------------------------------------------------------- densities


def _data(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / math.sqrt(d)
    train = rng.normal(size=(n, d)) @ a + 1.0
    test = np.concatenate([rng.normal(size=(60, d)) @ a + 1.0, rng.normal(size=(40, d)) @ a * 1.6 + 1.3])
    labels = np.r_[np.zeros(60), np.ones(40)]
    return torch.tensor(train, dtype=torch.float32), torch.tensor(test, dtype=torch.float32), labels


@pytest.mark.parametrize("n,d", [(200, 16), (40, 64)])
def test_ledoit_wolf_matches_sklearn(n, d):
    from sklearn.covariance import LedoitWolf

    x, _, _ = _data(n, d)
    mean, cov, shrink = ledoit_wolf(x)
    sk = LedoitWolf().fit(x.double().numpy())
    assert np.isclose(shrink, sk.shrinkage_, rtol=1e-6)
    np.testing.assert_allclose(mean.numpy(), sk.location_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(cov.numpy(), sk.covariance_, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n,d", [(200, 16), (40, 64)])
def test_gde_and_gde_sklearn_give_same_scores_and_auroc(n, d):
    from sklearn.metrics import roc_auc_score

    train, test, labels = _data(n, d, seed=1)
    a = GaussianDensity().fit(train).score(test).numpy()
    b = SklearnGaussianDensity().fit(train).score(test).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4)
    auc_a, auc_b = roc_auc_score(labels, a), roc_auc_score(labels, b)
    assert auc_a == auc_b and auc_a > 0.7


def test_kde_matches_sklearn_and_states_round_trip():
    from sklearn.neighbors import KernelDensity as SkKDE

    train, test, _ = _data(100, 8, seed=2)
    kde = KernelDensity(bandwidth=0.7).fit(train)
    ref = -SkKDE(bandwidth=0.7).fit(train.double().numpy()).score_samples(test.double().numpy())
    np.testing.assert_allclose(kde.score(test).numpy(), ref, rtol=1e-5)
    for name, dens in [("gde", GaussianDensity()), ("gde_sklearn", SklearnGaussianDensity()), ("kde", kde)]:
        dens.fit(train)
        again = density_from_state(name, dens.state())
        assert torch.allclose(again.score(test), dens.score(test))
    with pytest.raises(ConfigError, match="kde_bandwidth"):
        KernelDensity(bandwidth=0.0)


# ---------------------------------------------------------------- localisation


def test_patch_grid_extraction_and_receptive_field_map():
    x = torch.arange(3 * 20 * 20, dtype=torch.float32).reshape(3, 20, 20)
    p = extract_patches(x, 8, 4)
    assert grid_shape(20, 20, 8, 4) == (4, 4) and p.shape == (16, 3, 8, 8)
    assert torch.equal(p[5], x[:, 4:12, 4:12])  # row 1, column 1
    assert torch.equal(patches_at(x, 8, 4, torch.tensor([5, 15])), p[[5, 15]])
    assert grid_shape(22, 22, 8, 4) == (5, 5)  # padded on the bottom/right to fit the stride
    scores = torch.zeros(1, 4, 4)
    scores[0, 1, 1] = 1.0
    m = scores_to_map(scores, (20, 20), 8, 4, sigma=0)[0]
    assert m.shape == (20, 20) and m[4:12, 4:12].min() > 0 and m[12:, :].max() == 0 and m[:, :4].max() == 0
    flat = scores_to_map(torch.full((2, 5, 5), 3.0), (22, 22), 8, 4, sigma=2)
    assert flat.shape == (2, 22, 22) and np.allclose(flat, 3.0)


# ---------------------------------------------------------------- model and training


@pytest.mark.parametrize("name,dim", [("mobilenet_v2", 1280), ("resnet18", 512)])
def test_encoder_drops_the_classifier(name, dim):
    enc, d = build_encoder(name, "none")
    assert d == dim and enc.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, dim)
    assert not any(isinstance(m, (nn.Dropout, nn.Linear)) for m in enc.modules())


def test_freeze_before_and_bad_module_name():
    enc, _ = build_encoder("mobilenet_v2", "none")
    frozen_bn = freeze_before(enc, "features.14")
    grads = {n.split(".")[1]: p.requires_grad for n, p in enc.named_parameters()}
    assert not grads["13"] and grads["14"] and grads["18"]
    assert "features.0.1" in frozen_bn and not any(n.startswith("features.14") for n in frozen_bn)
    with pytest.raises(ConfigError, match="train_from"):
        freeze_before(enc, "features.99")
    with pytest.raises(ConfigError):
        strip_classifier(nn.Sequential(nn.Conv2d(3, 4, 3)))


class _Tiny(nn.Module):
    """A small encoder; raises once its training forward count reaches ``fail_at`` (a simulated crash)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.fail_at is not None and self.calls > self.fail_at:
                raise RuntimeError("simulated crash")
        return self.net(x)


def _tiny_net(fail_at=None) -> CutPasteNet:
    torch.manual_seed(0)
    return CutPasteNet(_Tiny(fail_at), 8, [16], 3)


def test_training_checkpoint_resume_is_exact(tmp_path):
    images = torch.randn(10, 3, 32, 32, generator=_gen(8))
    cfg = TrainConfig(steps=6, batch_size=4, checkpoint_every=3, log_every=1, variant="3way")
    kw = dict(seed=0, salt=0, device=torch.device("cpu"), frozen_bn=[], show_progress=False, fingerprint="a")
    ref = _tiny_net()
    hist_ref = train_cutpaste(ref, images, cfg, **kw)
    assert len(hist_ref) == 6 and all(0 <= h["acc"] <= 1 for h in hist_ref)

    ckpt = tmp_path / "train.pt"
    crashed = _tiny_net(fail_at=4)  # dies during step 5, after the checkpoint of step 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_cutpaste(crashed, images, cfg, checkpoint=ckpt, **kw)
    resumed = _tiny_net()
    hist = train_cutpaste(resumed, images, cfg, checkpoint=ckpt, **kw)
    assert [h["step"] for h in hist] == list(range(1, 7))
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="another config"):
        train_cutpaste(_tiny_net(), images, cfg, checkpoint=ckpt, **{**kw, "fingerprint": "b"})


def test_batch_indices_cover_each_epoch():
    idx = torch.cat([batch_indices(s, 10, 4, seed=0, salt=0) for s in range(5)])  # 20 = two epochs
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:].tolist()) == list(range(10))
    assert not torch.equal(idx[:10], idx[10:])


def test_head_only_steps_leave_the_encoder_untouched():
    images = torch.randn(8, 3, 32, 32, generator=_gen(9))
    net = _tiny_net()
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    cfg = TrainConfig(steps=2, batch_size=4, freeze_backbone_steps=2, variant="normal", checkpoint_every=0)
    train_cutpaste(net, images, cfg, seed=0, salt=0, device=torch.device("cpu"), frozen_bn=[], show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.encoder.state_dict().items())


# ---------------------------------------------------------------- end to end


def test_end_to_end_scar_gde_sklearn_without_patch_model_save_load_and_resume(small_synthetic_root, tmp_path):
    # the patch model path (3way, gde) runs end to end in tests/test_methods_e2e.py
    cfg = compose_cfg(["method=cutpaste", "preset=tiny", "method.variant=scar", "method.density=gde_sklearn",
                       "method.patch.enabled=false", "method.train.keep_checkpoints=true",
                       *small_synthetic_overrides(small_synthetic_root)])
    dm = build_datamodule(cfg).setup()
    ctx = RunContext(seed=0, image_size=dm.out_size, work_dir=tmp_path / "work", progress=False)
    m = CutPaste(cfg.method, ctx)
    m.fit(dm.train_dataloader())
    assert m.n_classes == 2 and (tmp_path / "work" / "train_image.pt").is_file()
    assert {"train_s", "density_s"} <= set(m.timings) and len(m.history["image"]) == 1
    assert [(e["stage"], e["step"]) for e in m.train_log] == [("image", 2)]
    assert {"loss", "acc", "lr"} <= set(m.train_log[0]) and np.isfinite(m.train_log[0]["loss"])
    pred = m.predict(dm.test_dataloader())
    assert pred.anomaly_maps.shape == (len(dm.test_samples), *dm.out_size)
    assert np.isfinite(pred.image_scores).all() and len(np.unique(pred.image_scores)) > 1
    np.testing.assert_array_equal(pred.anomaly_maps[:, 5, 7], pred.image_scores)  # constant map = image score
    m.save(tmp_path / "model")
    loaded = CutPaste.load(tmp_path / "model", RunContext(seed=0, progress=False))
    assert loaded.train_log == m.train_log
    again = loaded.predict(dm.test_dataloader())
    np.testing.assert_allclose(again.image_scores, pred.image_scores, rtol=1e-5)
    # a second fit in the same work folder resumes the finished training instead of training again
    m2 = CutPaste(cfg.method, ctx)
    m2.fit(dm.train_dataloader())
    assert m2.history["image"] == m.history["image"]
    np.testing.assert_allclose(m2.predict(dm.test_dataloader()).image_scores, pred.image_scores, rtol=1e-5)


def test_paper_preset_schedule_input_and_seed_options():
    cfg = compose_cfg(["method=cutpaste", "preset=paper", "method.backbone.weights=none", "method.patch.enabled=false"])
    assert cfg.dataset.image_size == 256 and cfg.dataset.crop_size is None  # 256 x 256, no centre crop
    assert cfg.method.normalize_embeddings and cfg.method.train.freeze_backbone_steps == 20  # the seed's
    m = CutPaste(cfg.method, RunContext())
    tc = m._train_config(209, patch=False)
    assert tc.steps == 256 * 256 and tc.batch_size == 32 and tc.freeze_backbone_steps == 20
    one_pass = compose_cfg(["method=cutpaste", "preset=tiny", "method.train.steps=null", "method.train.epochs=3",
                            "method.train.steps_per_epoch=null", "method.train.batch_size=32"])
    assert CutPaste(one_pass.method, RunContext())._train_config(209, patch=False).steps == 3 * 7  # ceil(209 / 32)
    bad = compose_cfg(["method=cutpaste", "preset=tiny", "method.train.steps=null", "method.train.steps_per_epoch=0"])
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        CutPaste(bad.method, RunContext())._train_config(10, patch=False)


def test_load_rejects_foreign_checkpoint_and_bad_config(tmp_path):
    torch.save({"method": "patchcore", "version": 1}, tmp_path / "cutpaste.pt")
    with pytest.raises(ConfigError, match="not 'cutpaste'"):
        CutPaste.load(tmp_path, RunContext())
    cfg = compose_cfg(["method=cutpaste", "preset=tiny", "method.density=gmm"])
    with pytest.raises(ConfigError, match="method.density"):
        CutPaste(cfg.method, RunContext())
