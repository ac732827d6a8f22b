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
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0 <= record["metrics"][key] <= 1
    assert record["method_timings"]["epochs_done"] == 2
    if "extra_metrics" in record:  # harness evaluates the plain reconstruction of the same model
        assert 0 <= record["extra_metrics"]["reconstruction"]["pixel_auroc"] <= 1


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
])
def test_bad_config_names_the_option(override, option, small_synthetic_root):
    cfg = _tiny_cfg(small_synthetic_root, extra=[override])
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        VAEEnergy(cfg.method, RunContext())
