"""VAE + energy projection: model shapes, losses, tiling, the projection itself, end to end, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.api import RunContext
from adbench.data.errors import ConfigError
from adbench.run import build_datamodule, run
from methods.vae_energy import ConvVAE, VAEEnergy, energy, project
from methods.vae_energy.losses import reconstruction_loss, ssim_map
from methods.vae_energy.tiles import stitch, tile

from .conftest import compose_cfg, small_synthetic_overrides


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models here are tiny: one thread avoids thread-sync overhead on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_model_shapes():
    for c in (1, 3):
        m = ConvVAE(c, 32, [8, 16], z_dim=16)
        x = torch.rand(4, c, 32, 32)
        recon, mu, logvar = m(x)
        assert recon.shape == x.shape and mu.shape == logvar.shape == (4, 16)
        assert recon.min() >= 0 and recon.max() <= 1
        m.eval()
        assert m.reconstruct(x).shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        ConvVAE(3, 30, [8, 16], 16)


def test_losses():
    x = torch.rand(2, 3, 16, 16)
    for kind in ("bce", "l2", "ssim"):
        assert reconstruction_loss(x.clamp(0.1, 0.9), x, kind).shape == (2,)
    assert torch.allclose(reconstruction_loss(x, x, "l2"), torch.zeros(2))
    assert torch.allclose(ssim_map(x, x), torch.ones_like(x), atol=1e-4)
    assert (reconstruction_loss(1 - x, x, "ssim") > 1).all()
    with pytest.raises(ConfigError, match="method.loss"):
        reconstruction_loss(x, x, "l1")


@pytest.mark.parametrize("stride", [8, 4])
def test_tile_stitch_round_trip(stride):
    x = torch.rand(2, 3, 24, 24)
    crops = tile(x, 8, stride)
    per_side = (24 - 8) // stride + 1
    assert crops.shape == (2 * per_side**2, 3, 8, 8)
    assert torch.equal(crops[1], x[0, :, 0:8, stride : stride + 8])  # row-major
    assert torch.allclose(stitch(crops, 24, stride), x, atol=1e-6)
    with pytest.raises(ValueError, match="tile"):
        tile(x, 10, 4)


def _normal_images(n: int, g: torch.Generator) -> torch.Tensor:
    """A bright disc of random radius and position on a dark background: [n, 1, 32, 32]."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    c = 16 + 3 * (torch.rand(n, 2, generator=g) - 0.5)
    r = 8 + 2 * torch.rand(n, generator=g)
    d = ((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2).sqrt()
    return (0.15 + 0.7 * torch.sigmoid(2 * (r[:, None, None] - d)))[:, None]


@pytest.fixture(scope="module")
def trained_vae() -> ConvVAE:
    """A small VAE trained for a few seconds on the disc images."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = _normal_images(256, g)
    model = ConvVAE(1, 32, [16, 32], z_dim=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        x = data[torch.randint(0, len(data), (32,), generator=g)]
        recon, mu, logvar = model(x)
        loss = (reconstruction_loss(recon, x) + 0.1 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def _with_defect(x: torch.Tensor) -> torch.Tensor:
    """Paint a dark square on each disc (the anomaly)."""
    y = x.clone()
    y[:, :, 12:18, 12:18] = 0.05
    return y


def test_one_projection_step_lowers_energy(trained_vae):
    x0 = _with_defect(_normal_images(8, torch.Generator().manual_seed(1)))
    e0, _ = energy(trained_vae, x0, x0)
    x1, _ = project(trained_vae, x0, steps=1, alpha=0.05, lam=1.0)
    e1, _ = energy(trained_vae, x1, x0)
    assert not torch.equal(x1, x0)
    assert (e1 < e0).all(), (e0, e1)
    # parameters stay frozen and untouched by the projection
    assert all(p.grad is None for p in trained_vae.parameters())
    assert all(p.requires_grad for p in trained_vae.parameters())


class _LinearStub(torch.nn.Module):
    """f(x) = a * mean(x) in every pixel, mu = a * mean(x), logvar = 0: an energy whose gradient is known by hand."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))

    def encode(self, x):
        mu = self.a * x.flatten(1).mean(dim=1, keepdim=True)  # [B, 1]
        return mu, torch.zeros_like(mu)

    def decode(self, z):
        return z[:, :, None, None].expand(-1, 1, 4, 4)  # [B, 1, 4, 4]


def _hand_grad(x, x0, a, lam, kl):
    """Gradient of E(x) = sum (f - x)^2 + lam |x - x0|_1 + kl * mu^2 / 2 for the stub, by hand: [B, 1, 4, 4]."""
    n = x[0].numel()
    f = a * x.flatten(1).mean(1)[:, None, None, None]  # f(x) = mu in every pixel, [B, 1, 1, 1]
    r = f - x
    return (2 * a / n) * r.flatten(1).sum(1)[:, None, None, None] - 2 * r + lam * torch.sign(x - x0) + kl * f * a / n


def _hand_step(x, grad, a, alpha):
    """x - alpha * grad * (x - f(x))^2, clamped to [0, 1]."""
    r = a * x.flatten(1).mean(1)[:, None, None, None] - x
    return (x - alpha * grad * r**2).clamp(0, 1)


def test_two_projection_steps_match_hand_computed_steps():
    g = torch.Generator().manual_seed(3)
    x0 = 0.2 + 0.6 * torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64)
    a, alpha, lam, kl = 0.9, 0.8, 0.3, 1.0
    model = _LinearStub(a).double().eval()
    x1 = _hand_step(x0, _hand_grad(x0, x0, a, lam, kl), a, alpha)
    x2 = _hand_step(x1, _hand_grad(x1, x0, a, lam, kl), a, alpha)
    # a wrong implementation taking the energy's gradient at x_0 in the second step would return this:
    x2_grad_at_x0 = _hand_step(x1, _hand_grad(x0, x0, a, lam, kl) + lam * torch.sign(x1 - x0), a, alpha)
    assert (x2 - x2_grad_at_x0).abs().max() > 1e-3  # the case separates the two
    for steps, expected in ((1, x1), (2, x2)):
        xt, rec0 = project(model, x0, steps=steps, alpha=alpha, lam=lam, loss="l2", kl_weight=kl)
        torch.testing.assert_close(xt, expected, rtol=0, atol=1e-7)
        torch.testing.assert_close(rec0, (a * x0.flatten(1).mean(1))[:, None, None, None].expand(-1, 1, 4, 4))
    # the KL term changes the steps: the energy must carry it when asked (paper: E is the VAE's loss)
    xt_no_kl, _ = project(model, x0, steps=2, alpha=alpha, lam=lam, loss="l2", kl_weight=0.0)
    assert (xt_no_kl - x2).abs().max() > 1e-6


def test_projection_leaves_normal_image_nearly_unchanged(trained_vae):
    normal = _normal_images(8, torch.Generator().manual_seed(2))
    defect = _with_defect(normal)
    xt_n, _ = project(trained_vae, normal, steps=20)
    xt_d, _ = project(trained_vae, defect, steps=20)
    change_n = (xt_n - normal).abs().mean().item()
    inside = (xt_d - defect).abs()[:, :, 12:18, 12:18].mean().item()
    assert change_n < 0.01, change_n
    assert inside > 10 * change_n, (inside, change_n)  # the defect is what gets projected away


def test_projection_needs_eval_mode(trained_vae):
    trained_vae.train()
    try:
        with pytest.raises(RuntimeError, match="eval"):
            project(trained_vae, torch.rand(1, 1, 32, 32), steps=1)
    finally:
        trained_vae.eval()


def _tiny_cfg(root, category="washer", extra=()):
    return compose_cfg(["method=vae_energy", "preset=tiny", *small_synthetic_overrides(root, category), *extra])


@pytest.mark.parametrize("category", ["washer", "weave"])  # object, texture (tiled)
def test_end_to_end_synthetic(category, small_synthetic_root, tmp_path):
    cfg = _tiny_cfg(small_synthetic_root, category, [f"results_dir={tmp_path}"])
    record = run(cfg)
    assert set(record["metrics"]) >= {"image_auroc", "pixel_auroc", "aupro"}
    assert record["method_timings"]["epochs_done"] == 2
    # the harness evaluates the plain reconstruction of the same model beside the projection
    assert set(record["extra_metrics"]) == {"reconstruction"}


def test_train_log_val_ratio_and_standardised_maps(small_synthetic_root, tmp_path):
    cfg = _tiny_cfg(small_synthetic_root, extra=["method.train.holdout=0.25", "method.standardize=true",
                                                 "method.train.epochs=3"])
    dm = build_datamodule(cfg).setup()
    ctx = RunContext(seed=0, category="washer", grayscale=True, image_size=dm.out_size, progress=False)
    m = VAEEnergy(cfg.method, ctx)
    m.fit(dm.train_dataloader())
    # COMMON.md training-curve contract: one entry per epoch, steps increasing, val_ratio on the held-out images
    assert [e["epoch"] for e in m.train_log] == [1, 2, 3]
    assert all(e["stage"] == "train" and e["lr"] == 5e-4 and np.isfinite(e["loss"]) for e in m.train_log)
    steps = [e["step"] for e in m.train_log]
    assert steps[0] >= 1 and steps == sorted(set(steps))
    assert all(0 < e["val_ratio"] < 100 for e in m.train_log)
    assert m.timings["n_holdout"] == 3  # 25 % of the 12 training images, not trained on
    pred = m.predict(dm.test_dataloader())
    assert set(m.extra_predictions) == {"reconstruction", "projection_raw", "reconstruction_raw"}
    mean, std = m.norm_stats["projection"]
    assert tuple(mean.shape) == dm.out_size and (std > 0).all()
    raw = m.extra_predictions["projection_raw"].anomaly_maps
    np.testing.assert_allclose(pred.anomaly_maps, (raw - mean.numpy()) / std.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred.image_scores, pred.anomaly_maps.reshape(len(raw), -1).max(1), rtol=1e-6)
    m.save(tmp_path / "ck")
    loaded = VAEEnergy.load(tmp_path / "ck", RunContext(seed=0, image_size=dm.out_size, progress=False))
    assert loaded.train_log == m.train_log
    np.testing.assert_allclose(loaded.predict(dm.test_dataloader()).anomaly_maps, pred.anomaly_maps, atol=1e-5)


def test_keep_best_restores_the_epoch_with_the_lowest_held_out_ratio(small_synthetic_root):
    cfg = _tiny_cfg(small_synthetic_root, extra=["method.train.holdout=0.25", "method.train.epochs=4",
                                                 "method.train.bn_recalibrate=true", "method.train.keep_best=true"])
    dm = build_datamodule(cfg).setup()
    m = VAEEnergy(cfg.method, RunContext(seed=0, category="washer", grayscale=True, image_size=dm.out_size,
                                         progress=False))
    m.fit(dm.train_dataloader())
    vals = [e["val_ratio"] for e in m.train_log]
    assert len(vals) == 4 and m.timings["best_val_ratio"] == min(vals)
    assert m.timings["best_epoch"] == 1 + vals.index(min(vals))
    np.testing.assert_allclose(m.timings["val_ratio"], min(vals), rtol=1e-5)  # the kept weights and BN statistics


def _out_size(cfg) -> tuple[int, int]:
    side = int(cfg.dataset.crop_size or cfg.dataset.image_size)
    return side, side


@pytest.mark.parametrize("preset", ["paper", "cpu", "tiny"])
@pytest.mark.parametrize("texture", [False, True])
def test_presets_feed_the_model_without_upsampling(preset, texture):
    cfg = compose_cfg(["method=vae_energy", f"preset={preset}"])
    VAEEnergy(cfg.method, RunContext(is_texture=texture, image_size=_out_size(cfg)))  # raises when it would upsample
    if preset == "paper":  # the paper's input: 512 px textures cut in 128 px crops, objects whole at 128 px
        assert (cfg.dataset.image_size, cfg.dataset.crop_size) == (512, None)
        assert (cfg.method.texture.resize, cfg.method.input_size) == (512, 128)
        assert cfg.method.projection.steps == 100
        assert cfg.method.projection.kl_weight is None and cfg.method.kl_weight == 1.0  # E = the VAE's loss


def test_upsampling_is_refused_with_the_fix():
    cfg = compose_cfg(["method=vae_energy", "dataset.image_size=256", "dataset.crop_size=224"])
    with pytest.raises(ConfigError, match=r"224x224 images to method\.texture\.resize=512.*dataset\.image_size>=512 "
                                          r"dataset\.crop_size=null"):
        VAEEnergy(cfg.method, RunContext(is_texture=True, image_size=(224, 224)))
    with pytest.raises(ConfigError, match=r"method\.input_size=128"):
        VAEEnergy(cfg.method, RunContext(is_texture=False, image_size=(100, 100)))
    m = VAEEnergy(cfg.method, RunContext(is_texture=False, image_size=(224, 224)))
    assert m.to_model_space(torch.zeros(1, 3, 224, 224)).shape == (1, 3, 128, 128)  # downsampling is fine
    with pytest.raises(ConfigError, match="upsample"):
        m.to_model_space(torch.zeros(1, 3, 96, 96))


def test_maps_save_load_round_trip_and_wrong_checkpoint(small_synthetic_root, tmp_path):
    cfg = _tiny_cfg(small_synthetic_root, extra=["method.image_score=topk", "method.topk=20"])
    dm = build_datamodule(cfg).setup()
    ctx = RunContext(seed=0, category="washer", grayscale=True, image_size=dm.out_size, progress=False)
    m = VAEEnergy(cfg.method, ctx)
    assert m.model.in_channels == 1
    m.fit(dm.train_dataloader())
    pred = m.predict(dm.test_dataloader())
    assert pred.anomaly_maps.shape == (len(dm.test_samples), *dm.out_size)
    rec = m.extra_predictions["reconstruction"]
    assert rec.anomaly_maps.shape == pred.anomaly_maps.shape
    assert not np.allclose(rec.anomaly_maps, pred.anomaly_maps)

    m.save(tmp_path / "ck")
    loaded = VAEEnergy.load(tmp_path / "ck", RunContext(seed=0, image_size=dm.out_size, progress=False))
    assert loaded.model.in_channels == 1  # from the checkpoint, not the new context
    again = loaded.predict(dm.test_dataloader())
    np.testing.assert_allclose(again.anomaly_maps, pred.anomaly_maps, atol=1e-6)
    np.testing.assert_allclose(again.image_scores, pred.image_scores, atol=1e-6)
    loaded.cfg.score = "reconstruction"  # the plain VAE map alone, no projection
    plain = loaded.predict(dm.test_dataloader())
    np.testing.assert_allclose(plain.anomaly_maps, rec.anomaly_maps, atol=1e-6)
    assert loaded.extra_predictions == {}

    state = torch.load(tmp_path / "ck" / "vae_energy.pt", weights_only=True)
    state["method"] = "patchcore"
    torch.save(state, tmp_path / "ck" / "vae_energy.pt")
    with pytest.raises(ConfigError, match="patchcore"):
        VAEEnergy.load(tmp_path / "ck", ctx)
    state["method"], state["version"] = "vae_energy", 999
    torch.save(state, tmp_path / "ck" / "vae_energy.pt")
    with pytest.raises(ConfigError, match="version"):
        VAEEnergy.load(tmp_path / "ck", ctx)


def test_training_resume_matches_uninterrupted(small_synthetic_root, tmp_path):
    base = ["method.train.checkpoint_every=1"]
    cfg3 = _tiny_cfg(small_synthetic_root, extra=[*base, "method.train.epochs=3"])
    dm = build_datamodule(cfg3).setup()

    def fitted(cfg, work_dir):
        ctx = RunContext(seed=0, category="washer", image_size=dm.out_size, work_dir=work_dir, progress=False)
        m = VAEEnergy(cfg.method, ctx)
        m.fit(dm.train_dataloader())
        return m

    straight = fitted(cfg3, tmp_path / "a")
    fitted(_tiny_cfg(small_synthetic_root, extra=[*base, "method.train.epochs=2"]), tmp_path / "b")
    resume = [*base, "method.train.epochs=3", "method.train.resume=true"]
    resumed = fitted(_tiny_cfg(small_synthetic_root, extra=resume), tmp_path / "b")
    assert len(resumed.history) == 3
    np.testing.assert_allclose(resumed.history, straight.history, rtol=1e-5)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


@pytest.mark.parametrize("override, option", [
    ("method.loss=l1", "method.loss"), ("method.score=both", "method.score"),
    ("method.input_size=30", "method.input_size"), ("method.train.batch_size=1", "method.train.batch_size"),
    ("method.texture.stride=7", "method.texture"), ("method.projection.loss=mse", "method.projection.loss"),
    ("method.standardize=true", "method.train.holdout"), ("method.train.holdout=1.5", "method.train.holdout"),
    ("method.projection.kl_weight=-1", "method.projection.kl_weight"),
])
def test_bad_config_names_the_option(override, option, small_synthetic_root):
    cfg = _tiny_cfg(small_synthetic_root, extra=[override])
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        VAEEnergy(cfg.method, RunContext())


def test_auto_chooses_the_map_per_run_and_the_checkpoint_keeps_it(small_synthetic_root, tmp_path):
    cfg = _tiny_cfg(small_synthetic_root, extra=["method.train.holdout=0.34", "method.standardize=auto",
                                                 "method.score=auto", f"results_dir={tmp_path}", "save_model=true"])
    record = run(cfg)
    sel = record["map_selection"]
    kinds = {"projection", "projection_raw", "reconstruction", "reconstruction_raw"}
    assert sel["chosen"] in kinds and set(sel["pixel_auroc"]) == kinds and sel["n_images"] == 4
    assert set(record["extra_metrics"]) == kinds - {sel["chosen"]}  # the main map is the chosen one
    loaded = VAEEnergy.load(record["checkpoint"], RunContext(seed=0, progress=False))
    assert loaded.map_kind == sel["chosen"] and loaded.selection == sel
    # standardize=auto alone: the configured score, standardised or not
    m = VAEEnergy(_tiny_cfg(small_synthetic_root, extra=["method.train.holdout=0.34", "method.standardize=auto"]).method,
                  RunContext(seed=0, progress=False))
    assert m.candidates() == ["projection", "projection_raw"]
    with pytest.raises(ConfigError, match="method.score=auto"):
        VAEEnergy(_tiny_cfg(small_synthetic_root, extra=["method.score=auto"]).method, RunContext(progress=False))
