"""LoRA-MAE: masks, LoRA freezing, position-table interpolation, pretrained loading, training, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from adbench.api import RunContext
from adbench.backbones import WeightsError
from adbench.data.errors import ConfigError
from adbench.registry import get_method
from adbench.run import build_datamodule, run
from methods.lora_mae import lora as lora_mod
from methods.lora_mae.masks import interleaved_masks, tile_shape, visible_indices
from methods.lora_mae.method import LoRAMAE, gaussian_blur, holdout_split, image_scores, lr_at
from methods.lora_mae.model import (
    MaskedAutoencoderViT, count_parameters, hidden_from_keep, interpolate_pos_embed, random_keep, resolve_arch,
    sincos_pos_embed)
from methods.lora_mae.pretrained import load_into

from .conftest import compose_cfg, small_synthetic_overrides

TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _method_cfg(**over):
    cfg = compose_cfg(["method=lora_mae", "preset=tiny"]).method
    for key, value in over.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _tiny_model(patch: int = 8, size: int = 32) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(resolve_arch("mae_vit_cpu_patch8", dict(TINY, patch_size=patch)), (size, size))


# --- masks ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,grid", [(4, (32, 32)), (4, (16, 16)), (2, (6, 8)), (9, (9, 12)), (6, (4, 9))])
def test_every_patch_hidden_exactly_once(k, grid):
    hidden = interleaved_masks(grid, k)  # [K, L]
    assert hidden.shape == (k, grid[0] * grid[1])
    assert torch.equal(hidden.sum(0), torch.ones(grid[0] * grid[1], dtype=torch.long))
    assert (hidden.sum(1) == grid[0] * grid[1] // k).all()  # each mask hides 1/K
    for row in hidden:  # visible indices are exactly the complement
        assert set(visible_indices(row).tolist()) == set(torch.nonzero(~row).reshape(-1).tolist())


def test_mask_pattern_is_interleaved():
    hidden = interleaved_masks((4, 4), 4).reshape(4, 4, 4)
    # mask 0 hides the (even row, even column) patches: no two hidden patches touch
    assert torch.equal(hidden[0], torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool))
    assert tile_shape(4) == (2, 2) and tile_shape(2) == (1, 2) and tile_shape(9) == (3, 3)


def test_mask_divisibility_is_validated():
    with pytest.raises(ConfigError, match="num_masks=4.*not divisible"):
        interleaved_masks((15, 16), 4)
    with pytest.raises(ConfigError, match="num_masks"):
        LoRAMAE(_method_cfg(**{"inference.num_masks": 9}), RunContext(image_size=(64, 64), progress=False))


# --- model ---------------------------------------------------------------------------------------------------

def test_patchify_roundtrip_and_shapes():
    model = _tiny_model(patch=8, size=32)
    x = torch.randn(2, 3, 32, 32)
    patches = model.patchify(x)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    assert torch.equal(model.unpatchify(patches), x)
    # patch 1 is the second patch of the first row
    assert torch.equal(patches[0, 1].reshape(8, 8, 3).permute(2, 0, 1), x[0, :, :8, 8:16])
    keep = random_keep(2, 16, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (2, 4)
    pred = model(x, keep)
    assert pred.shape == (2, 16, 192)
    assert model.loss(x, pred, keep).ndim == 0


def test_input_not_divisible_by_patch_fails_clearly():
    with pytest.raises(ConfigError, match="not divisible by the patch size 7"):
        _tiny_model(patch=7, size=32)


def test_pos_embed_interpolation():
    table = sincos_pos_embed(32, (14, 14))  # [1, 1+196, 32]
    table[:, 0] = 3.0  # class-token row must survive
    out = interpolate_pos_embed(table, (32, 32))
    assert out.shape == (1, 1 + 32 * 32, 32)
    assert torch.all(out[:, 0] == 3.0)
    # corners of the grid stay close to the source corners, and resizing back roughly recovers the table
    grid_in = table[0, 1:].reshape(14, 14, 32)
    grid_out = out[0, 1:].reshape(32, 32, 32)
    assert torch.allclose(grid_out[0, 0], grid_in[0, 0], atol=0.15)
    back = interpolate_pos_embed(out, (14, 14))
    assert torch.allclose(back[0, 1:], table[0, 1:], atol=0.1)
    # a table without class-token row gets a zero one
    assert interpolate_pos_embed(table[:, 1:], (4, 4)).shape == (1, 17, 32)
    assert interpolate_pos_embed(table, (14, 14)) is table


# --- LoRA and freezing ---------------------------------------------------------------------------------------

def test_freeze_non_lora_leaves_only_intended_params_trainable():
    model = _tiny_model()
    replaced = lora_mod.apply_lora(model.blocks, rank=4, alpha=8)
    assert replaced == ["0.attn.qkv", "0.attn.proj", "1.attn.qkv", "1.attn.proj"]
    lora_mod.set_trainable(model, freeze_non_lora=True, train_patch_embed=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, _ in model.named_parameters():
        intended = "lora_" in name or name.startswith("decoder_") or name == "mask_token"
        assert (name in trainable) == intended, name
    assert "blocks.0.attn.qkv.lora_A" in trainable and "blocks.0.attn.qkv.weight" not in trainable
    assert not any(n.startswith("blocks.") and "mlp" in n for n in trainable)
    # the gradient reaches exactly those parameters
    x = torch.randn(2, 3, 32, 32)
    keep = random_keep(2, 16, 0.75, torch.Generator().manual_seed(0))
    model.loss(x, model(x, keep), keep).backward()
    got_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got_grad <= trainable and "blocks.1.attn.proj.lora_A" in got_grad

    lora_mod.set_trainable(model, freeze_non_lora=True, train_patch_embed=True)
    assert model.patch_embed.proj.weight.requires_grad and not model.cls_token.requires_grad
    lora_mod.set_trainable(model, freeze_non_lora=False, train_patch_embed=False)
    assert all(p.requires_grad for p in model.parameters())


def test_lora_mlp_option_and_zero_init_keeps_outputs():
    model = _tiny_model().eval()
    x = torch.randn(1, 3, 32, 32)
    keep = torch.arange(0, 16, 2)[None]
    before = model(x, keep)
    names = lora_mod.apply_lora(model.blocks, rank=2, alpha=2, mlp=True)
    assert "0.mlp.fc1" in names and "1.mlp.fc2" in names
    assert torch.allclose(model(x, keep), before, atol=1e-6)  # B starts at zero: same function


def test_pretrained_none_trains_every_weight():
    m = LoRAMAE(_method_cfg(), RunContext(image_size=(64, 64), progress=False))
    assert not m.use_lora and m.trainable == m.total
    assert not any("lora_" in n for n, _ in m.model.named_parameters())


# --- pretrained loading --------------------------------------------------------------------------------------

def _timm_style_state(embed_dim=32, depth=2, heads=2, patch=16, grid=4) -> dict[str, torch.Tensor]:
    """A timm-format MAE encoder state dict (as timm's vit_*_patch16_224.mae, scaled down)."""
    import timm

    vit = timm.models.VisionTransformer(img_size=patch * grid, patch_size=patch, embed_dim=embed_dim, depth=depth,
                                        num_heads=heads, num_classes=0, global_pool="token")
    return {k: v.clone() for k, v in vit.state_dict().items()}


@pytest.mark.parametrize("fair_format", [False, True])
def test_load_timm_format_state_dict_from_local_file(tmp_path, fair_format):
    state = _timm_style_state()
    path = tmp_path / "mae_tiny.pth"
    torch.save({"model": state} if fair_format else state, path)
    cfg = _method_cfg(**{"pretrained": str(path), "model.patch_size": 8, "model.embed_dim": 32, "model.depth": 2,
                         "model.num_heads": 2, "lora.rank": 4})
    m = LoRAMAE(cfg, RunContext(image_size=(64, 64), progress=False))
    sd = m.model.state_dict()
    # encoder weights equal the file's; LoRA wraps the same tensors
    assert torch.equal(sd["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert torch.equal(sd["blocks.0.mlp.fc2.bias"], state["blocks.0.mlp.fc2.bias"])
    assert torch.equal(sd["norm.weight"], state["norm.weight"])
    assert torch.equal(sd["cls_token"], state["cls_token"])
    # 16-px kernel vs 8-px patches: patch embedding re-initialised and trained; position table 4x4 -> 8x8
    assert m.patch_embed_reinit and m.model.patch_embed.proj.weight.requires_grad
    assert torch.allclose(sd["pos_embed"], interpolate_pos_embed(state["pos_embed"], (8, 8)))
    assert m.use_lora and 0 < m.trainable < m.total
    assert not m.model.blocks[0].attn.qkv.weight.requires_grad and m.model.blocks[0].attn.qkv.lora_B.requires_grad


def test_load_same_patch_size_keeps_patch_embed_frozen():
    state = _timm_style_state(patch=8, grid=4)
    model = _tiny_model(patch=8, size=32)
    report = load_into(model, state, "test")
    assert not report.patch_embed_reinit and not report.pos_embed_interpolated
    assert torch.equal(model.patch_embed.proj.weight, state["patch_embed.proj.weight"])


def test_load_mismatched_checkpoint_fails_clearly(tmp_path):
    state = _timm_style_state(embed_dim=48, heads=2)
    with pytest.raises(WeightsError, match="does not fit method.arch"):
        load_into(_tiny_model(), state, "file x")
    with pytest.raises(WeightsError, match="not a ViT / MAE"):
        load_into(_tiny_model(), {"fc.weight": torch.zeros(2, 2)}, "file y")
    with pytest.raises(WeightsError, match="not found"):
        LoRAMAE(_method_cfg(pretrained=str(tmp_path / "missing.pth")), RunContext(image_size=(64, 64)))


def test_offline_timm_weights_raise_weights_error(monkeypatch):
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*_a, **_k):
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match="method.pretrained=/path/to/mae_pretrain_vit_large.pth"):
        LoRAMAE(_method_cfg(pretrained="vit_base_patch16_224.mae", arch="mae_vit_base_patch16"),
                RunContext(image_size=(224, 224)))


def test_large_patch7_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = MaskedAutoencoderViT(resolve_arch("mae_vit_large_patch7"), (224, 224))
        assert model.grid == (32, 32)
        lora_mod.apply_lora(model.blocks, rank=4, alpha=4)
    lora_mod.set_trainable(model, freeze_non_lora=True, train_patch_embed=True)
    trainable, total = count_parameters(model)
    lora = 24 * 4 * ((1024 + 3 * 1024) + (1024 + 1024))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == lora
    assert 300e6 < total < 340e6 and trainable < 0.1 * total


# --- scoring helpers -----------------------------------------------------------------------------------------

def test_smoothing_and_scores():
    maps = torch.zeros(2, 21, 21)
    maps[0, 10, 10] = 1.0
    out = gaussian_blur(maps, sigma=4, radius=4)
    assert out.shape == maps.shape and torch.isclose(out.sum(), torch.tensor(1.0))
    assert out[0, 10, 10] == out[0].max() and out[0, 0, 0] == 0  # radius 4: no mass 10 px away
    assert torch.equal(image_scores(maps, "max", 1), torch.tensor([1.0, 0.0]))
    assert torch.allclose(image_scores(maps, "topk_mean", 4), torch.tensor([0.25, 0.0]))
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1) and lr_at(99, 100, 10, 1.0, 0.0) < 0.01


# --- end to end ----------------------------------------------------------------------------------------------

def test_end_to_end_synthetic_and_save_load_roundtrip(small_synthetic_root, tmp_path):
    cfg = compose_cfg(["method=lora_mae", "preset=tiny", f"results_dir={tmp_path}", "save_model=true",
                       "method.train.epochs=3", *small_synthetic_overrides(small_synthetic_root)])
    record = run(cfg)
    m = record["metrics"]
    assert 0 <= m["pixel_auroc"] <= 1 and record["method_timings"]["train_s"] > 0
    dm = build_datamodule(cfg).setup()
    ckpt = tmp_path / "checkpoints" / record["path"].split("/runs/")[1].removesuffix(".json")
    assert not (ckpt / "lora_mae_train_state.pt").exists()  # training state removed once training ended
    loaded = get_method("lora_mae").load(ckpt, RunContext(seed=0, image_size=(999, 999), progress=False))
    assert loaded.ctx.image_size == dm.out_size  # from the checkpoint
    pred = loaded.predict(dm.test_dataloader())
    labels, masks, types = dm.test_targets()
    from adbench.evaluate import compute_metrics

    again = compute_metrics(pred.image_scores, pred.anomaly_maps, labels, masks, types)
    assert np.isclose(again["pixel_auroc"], m["pixel_auroc"], atol=1e-6)
    assert np.isclose(again["image_auroc"], m["image_auroc"], atol=1e-6)


def test_lora_checkpoint_roundtrip_keeps_lora_structure(tmp_path):
    state = _timm_style_state()
    path = tmp_path / "enc.pth"
    torch.save(state, path)
    cfg = _method_cfg(**{"pretrained": str(path), "model.patch_size": 16, "model.embed_dim": 32, "model.depth": 2,
                         "model.num_heads": 2, "train.epochs": 1})
    ctx = RunContext(image_size=(64, 64), progress=False)
    m = LoRAMAE(cfg, ctx)
    m.train_on(torch.randn(4, 3, 64, 64))
    m.save(tmp_path / "ck")
    path.unlink()  # loading must not need the pretrained file
    again = LoRAMAE.load(tmp_path / "ck", ctx)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(again.anomaly_maps(x), m.anomaly_maps(x))
    assert any("lora_B" in n for n in again.model.state_dict())


def test_training_resumes_from_checkpoint(tmp_path):
    cfg = _method_cfg(**{"train.epochs": 3, "train.checkpoint_every": 1, "train.batch_size": 2})
    images = torch.randn(4, 3, 64, 64)
    full = LoRAMAE(cfg, RunContext(image_size=(64, 64), progress=False, work_dir=tmp_path / "a"))
    full.train_on(images)
    part = LoRAMAE(cfg, RunContext(image_size=(64, 64), progress=False, work_dir=tmp_path / "b"))
    part.train_on(images, stop_epoch=2)  # "interrupted" after 2 epochs, checkpoint on disk
    assert (tmp_path / "b" / "lora_mae_train_state.pt").is_file()
    resumed = LoRAMAE(cfg, RunContext(image_size=(64, 64), progress=False, work_dir=tmp_path / "b"))
    resumed.train_on(images)
    assert resumed.history[:2] == part.history and len(resumed.history) == 3
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_checkpoint_of_other_method_rejected(tmp_path):
    torch.save({"method": "patchcore", "version": 1}, tmp_path / "lora_mae.pt")
    with pytest.raises(ConfigError, match="not 'lora_mae'"):
        LoRAMAE.load(tmp_path, RunContext())


# --- issue 12: the K-pass combination, un-normalisation, options -------------------------------------------

class _OracleOnVisible(MaskedAutoencoderViT):
    """Predicts the exact target on visible patches and 0 on hidden ones."""

    def forward(self, imgs, ids_keep):
        target, _, _ = self.targets(imgs)  # [B, L, p*p*C]
        visible = 1.0 - hidden_from_keep(ids_keep, self.num_patches)  # [B, L]
        return target * visible[..., None]


@pytest.mark.parametrize("layout", ["tiles", "stripes"])
def test_k_pass_map_is_target_squared_everywhere(layout):
    cfg = _method_cfg(**{"inference.mask_layout": layout, "norm_pix_loss": False})
    m = LoRAMAE(cfg, RunContext(image_size=(64, 64), progress=False))
    m.model = _OracleOnVisible(m.model.arch, (64, 64), norm_pix_loss=False)
    x = torch.randn(3, 3, 64, 64)
    # each pixel must come from the one pass that hid it: there the prediction is 0, so the error is x^2
    assert torch.allclose(m.anomaly_maps(x), x.pow(2).mean(1), atol=1e-6)


def test_pixel_error_unnormalises_exactly():
    model = MaskedAutoencoderViT(resolve_arch("mae_vit_cpu_patch8", dict(TINY, patch_size=4)), (8, 8),
                                 norm_pix_loss=True)
    x = torch.rand(1, 3, 8, 8) * 2
    patches = model.patchify(x)  # [1, 4, 48]
    mean = patches.mean(-1, keepdim=True)
    std = (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    delta = torch.randn_like(patches)
    pred = (patches - mean) / std + delta  # normalised target plus a known offset
    expected = model.unpatchify((delta * std) ** 2).mean(1)  # error in input space, channel mean
    assert torch.allclose(model.pixel_error(x, pred), expected, atol=1e-5)
    # a prediction equal to the normalised target reconstructs the input exactly
    assert model.pixel_error(x, (patches - mean) / std).abs().max() < 1e-10


def test_error_ratio_of_a_mean_image_predictor_is_one():
    m = LoRAMAE(_method_cfg(norm_pix_loss=False), RunContext(image_size=(64, 64), progress=False))
    reference = torch.randn(3, 64, 64)

    class _MeanImage(MaskedAutoencoderViT):
        def forward(self, imgs, ids_keep):
            return self.patchify(reference.expand(imgs.shape[0], -1, -1, -1))

    m.model = _MeanImage(m.model.arch, (64, 64), norm_pix_loss=False)
    assert m.error_ratio(torch.randn(5, 3, 64, 64), reference) == pytest.approx(1.0, rel=1e-5)


def test_stripes_layout_hides_every_kth_column():
    hidden = interleaved_masks((4, 8), 4, "stripes").reshape(4, 4, 8)
    for k in range(4):
        cols = torch.nonzero(hidden[k].all(0)).reshape(-1).tolist()
        assert cols == [k, k + 4] and hidden[k].sum() == 8
    with pytest.raises(ConfigError, match="mask_layout=stripes"):
        interleaved_masks((8, 6), 4, "stripes")


def test_reference_trainable_set():
    model = _tiny_model()
    lora_mod.apply_lora(model.blocks, rank=4)
    lora_mod.apply_lora(model.decoder_blocks, rank=4)
    assert model.blocks[0].attn.qkv.scaling == 0.25  # loralib: alpha / rank with the default alpha 1
    lora_mod.set_trainable(model, freeze_non_lora=True, train_patch_embed=False, trainable_set="reference")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"cls_token", "norm.weight", "decoder_embed.weight", "decoder_pred.weight", "mask_token"} <= trainable
    assert "decoder_blocks.0.attn.qkv.lora_A" in trainable and "decoder_blocks.0.attn.qkv.weight" not in trainable
    assert "decoder_blocks.0.mlp.fc1.weight" not in trainable and "blocks.0.norm1.weight" not in trainable
    lora_mod.set_trainable(model, freeze_non_lora=True, train_patch_embed=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "cls_token" not in trainable and "norm.weight" not in trainable
    assert "decoder_blocks.0.mlp.fc1.weight" in trainable


def test_smoothing_radius_defaults_to_three_sigma():
    maps = torch.zeros(1, 41, 41)
    maps[0, 20, 20] = 1.0
    out = gaussian_blur(maps, sigma=4)  # radius 12
    assert out[0, 20, 8] > 0 and out[0, 20, 7] == 0
    assert torch.isclose(out.sum(), torch.tensor(1.0))


def test_augmentation_jiggles_and_jitters_within_bounds():
    from adbench.data.transforms import denormalize, normalize
    from methods.lora_mae.augment import colour_jitter, enlarge, random_crops

    x = normalize(torch.rand(4, 3, 64, 64) * 0.5 + 0.25)
    big = enlarge(x, 1.035)
    assert big.shape[-2:] == (66, 66) and enlarge(x, 1.0) is x
    gen = torch.Generator().manual_seed(0)
    crops = random_crops(big, (64, 64), gen)
    assert crops.shape == x.shape
    assert any(torch.equal(crops[0], big[0, :, t:t + 64, l:l + 64]) for t in range(3) for l in range(3))
    jittered = denormalize(colour_jitter(x, 0.02, 0.0, gen))
    ratio = jittered / denormalize(x)  # brightness only: one factor per image within [0.98, 1.02]
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-4)
    assert ((ratio - 1).abs() <= 0.02 + 1e-4).all() and not torch.allclose(ratio, torch.ones_like(ratio))


@pytest.mark.parametrize("how", ["error", "residual"])
def test_holdout_logs_val_ratio_and_standardises(how):
    cfg = _method_cfg(**{"train.epochs": 2, "train.holdout": 0.25, "train.val_every": 1,
                         "inference.standardize": how, "inference.std_floor": 0.0})
    m = LoRAMAE(cfg, RunContext(image_size=(64, 64), progress=False))
    images = torch.randn(8, 3, 64, 64)
    m.train_on(images)
    assert [e["epoch"] for e in m.train_log] == [1, 2]
    assert all(e["stage"] == "train" and e["val_ratio"] > 0 and e["lr"] > 0 for e in m.train_log)
    _, hold = holdout_split(8, 0.25, 0)
    assert m.stats["err_mean"].shape == (64, 64) and m.stats["res_std"].shape == (3, 64, 64)
    # the held-out images themselves: z-scores with mean 0 and (sample) std 1 per pixel
    maps = m.scored_maps(images[hold])
    if how == "error":  # pixels whose held-out errors nearly coincide (std ~1e-5) carry float32 rounding: left out
        steady = m.stats["err_std"] > 1e-3
        assert steady.float().mean() > 0.99
        assert torch.allclose(maps.mean(0)[steady], torch.zeros(int(steady.sum())), atol=1e-4)
    else:  # RMS of 3 per-channel z-scores whose squares average (n-1)/n over the held-out images
        assert torch.allclose(maps.pow(2).mean(), torch.tensor(0.5), atol=1e-3)
    with pytest.raises(ConfigError, match="needs held-out normal images"):
        LoRAMAE(_method_cfg(**{"inference.standardize": how}), RunContext(image_size=(64, 64)))
    with pytest.raises(ConfigError, match="holds out 0 of 3"):
        LoRAMAE(_method_cfg(**{"train.holdout": 0.1}), RunContext(image_size=(64, 64))).train_on(torch.randn(3, 3, 64, 64))


# --- the other map kinds of the same model (extra_predictions) --------------------------------------------------

def test_extra_predictions_are_the_other_map_kinds_of_the_same_model():
    cfg = _method_cfg(**{"train.epochs": 1, "train.holdout": 0.25, "inference.standardize": "residual"})
    m = LoRAMAE(cfg, RunContext(image_size=(64, 64), progress=False))
    m.train_on(torch.randn(8, 3, 64, 64))
    x = torch.randn(3, 3, 64, 64)
    pred = m.predict([{"image": x[:2]}, {"image": x[2:]}])  # two batches, as a loader gives them
    assert set(m.extra_predictions) == {"raw", "error"}

    def smoothed(maps):
        return gaussian_blur(maps, float(cfg.inference.smoothing_sigma)).numpy()

    raw = m.extra_predictions["raw"]  # the unstandardised squared error of the same reconstructions
    np.testing.assert_allclose(raw.anomaly_maps, smoothed(m.anomaly_maps(x)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(raw.image_scores, raw.anomaly_maps.reshape(3, -1).max(1), rtol=1e-6)
    np.testing.assert_allclose(pred.anomaly_maps, smoothed(m.scored_maps(x)), rtol=1e-5, atol=1e-6)
    m.cfg.inference.standardize = "error"  # the main map is the configured kind, the extras the others
    np.testing.assert_allclose(m.extra_predictions["error"].anomaly_maps, smoothed(m.scored_maps(x)), rtol=1e-5,
                               atol=1e-6)
    # no held-out statistics (the paper preset): only the squared error, nothing extra
    plain = LoRAMAE(_method_cfg(**{"train.epochs": 1}), RunContext(image_size=(64, 64), progress=False))
    plain.train_on(torch.randn(8, 3, 64, 64))
    np.testing.assert_allclose(plain.predict([{"image": x}]).anomaly_maps, smoothed(plain.anomaly_maps(x)),
                               rtol=1e-5, atol=1e-7)
    assert plain.extra_predictions == {}


def test_record_carries_the_raw_maps_beside_the_standardised(small_synthetic_root, tmp_path):
    cfg = compose_cfg(["method=lora_mae", "preset=tiny", f"results_dir={tmp_path}", "method.train.epochs=1",
                       "method.train.holdout=0.25", "method.inference.standardize=residual",
                       *small_synthetic_overrides(small_synthetic_root)])
    record = run(cfg)
    assert set(record["extra_metrics"]) == {"raw", "error"}
    assert 0 <= record["extra_metrics"]["raw"]["pixel_auroc"] <= 1


def test_standardize_auto_chooses_per_run_and_the_checkpoint_keeps_it(small_synthetic_root, tmp_path):
    cfg = compose_cfg(["method=lora_mae", "preset=tiny", f"results_dir={tmp_path}", "method.train.epochs=1",
                       "method.train.holdout=0.34", "method.inference.standardize=auto", "save_model=true",
                       *small_synthetic_overrides(small_synthetic_root)])
    record = run(cfg)
    sel = record["map_selection"]
    assert sel["chosen"] in ("error", "none", "residual") and sel["n_images"] == 4
    assert set(sel["pixel_auroc"]) == {"error", "none", "residual"} and "synthetic anomalies" in sel["criterion"]
    main = {"none": "raw"}.get(sel["chosen"], sel["chosen"])
    assert set(record["extra_metrics"]) == {"raw", "error", "residual"} - {main}  # the main map is the chosen one
    loaded = LoRAMAE.load(record["checkpoint"], RunContext(progress=False))
    assert loaded.standardize == sel["chosen"] and loaded.selection == sel
    with pytest.raises(ConfigError, match="or auto"):
        LoRAMAE(_method_cfg(**{"inference.standardize": "sometimes"}), RunContext(image_size=(64, 64)))
