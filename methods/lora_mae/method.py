"""LoRA-MAE adapter: fine-tune an MAE on normal images, score by K deterministic masked reconstructions."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from adbench.api import Prediction, RunContext
from adbench.data.errors import ConfigError
from adbench.registry import register_method
from adbench.utils import load_method_state, progress, save_method_state, torch_load, torch_save_atomic

from .augment import colour_jitter, enlarge, random_crops
from .lora import TRAINABLE_SETS, apply_lora, set_trainable
from .masks import MASK_LAYOUTS, interleaved_masks, visible_indices
from .model import MaskedAutoencoderViT, count_parameters, random_keep, resolve_arch
from .pretrained import is_none, load_pretrained

log = logging.getLogger("adbench.lora_mae")

CHECKPOINT_VERSION = 2
MODEL_FILE = "lora_mae.pt"
STANDARDIZE = ("none", "error", "residual")
AUTO_CANDIDATES = ("error", "none", "residual")  # standardize=auto: the first wins ties
TRAIN_STATE_FILE = "lora_mae_train_state.pt"


def smoothing_radius(sigma: float, radius: int | None) -> int:
    """Kernel half-width in pixels: ``radius`` when given, else ceil(3 sigma) (the Gaussian's 99.7 % mass)."""
    return int(math.ceil(3.0 * sigma)) if radius is None else int(radius)


def gaussian_blur(maps: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian smoothing of [B, H, W] maps with a (2*radius+1)-tap kernel, reflected borders.

    ``radius`` None: ceil(3 sigma). The radius is capped at the map size minus one (reflection needs it).
    """
    radius = min(smoothing_radius(sigma, radius), maps.shape[-1] - 1, maps.shape[-2] - 1)
    if sigma <= 0 or radius <= 0:
        return maps
    taps = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()  # [2r+1]
    x = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")  # [B, 1, H+2r, W+2r]
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))  # rows
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))  # columns
    return x[:, 0]


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices) of n training images: round(fraction * n) held out, drawn with ``seed``."""
    n_hold = int(round(fraction * n))
    if fraction > 0 and (n_hold < 2 or n - n_hold < 1):
        raise ConfigError(f"method.train.holdout={fraction} holds out {n_hold} of {n} training images; it needs at "
                          f"least 2 held out and 1 left to train on (raise or lower it, or set 0)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_000 + seed))
    return perm[n_hold:].sort().values, perm[:n_hold].sort().values


def standardise(maps: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, floor: float) -> torch.Tensor:
    """Per-pixel z-scores (maps - mean) / max(std, floor * mean(std)) of error maps [B, H, W] against [H, W] statistics."""
    return (maps - mean) / std.clamp_min(floor * float(std.mean()) + 1e-12)


def map_of_kind(res: torch.Tensor, how: str, stats: dict[str, torch.Tensor] | None, floor: float) -> torch.Tensor:
    """Unsmoothed map [B, H, W] of kind ``how`` (an ``inference.standardize`` value) from residuals [B, 3, H, W]:
    ``none`` the squared error (channel mean), ``error`` its per-pixel z-score, ``residual`` the RMS over channels
    of the per-pixel, per-channel z-scores of the residual (the last two against held-out ``stats``)."""
    if how == "none":
        return res.pow(2).mean(dim=1)
    if how == "error":
        return standardise(res.pow(2).mean(dim=1), stats["err_mean"], stats["err_std"], floor)
    return standardise(res, stats["res_mean"], stats["res_std"], floor).pow(2).mean(dim=1).sqrt()


def image_scores(maps: torch.Tensor, how: str, topk: int) -> torch.Tensor:
    """Image scores [B] from maps [B, H, W]: the maximum, or the mean of the ``topk`` largest pixels."""
    flat = maps.flatten(1)
    if how == "max":
        return flat.amax(dim=1)
    if how == "topk_mean":
        return flat.topk(min(max(1, topk), flat.shape[1]), dim=1).values.mean(dim=1)
    raise ConfigError(f"method.inference.image_score={how!r} must be max or topk_mean")


def lr_at(step: int, total: int, warmup: int, base: float, minimum: float) -> float:
    """Linear warmup over ``warmup`` optimizer steps, then half-cycle cosine from ``base`` to ``minimum``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return minimum + (base - minimum) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))


@register_method("lora_mae")
class LoRAMAE:
    """Masked autoencoder with LoRA adapters (MAE: He et al., 2021; LoRA: Hu et al., 2021) scored by
    reconstruction error under K interleaved masks that together hide every patch once."""

    def __init__(self, cfg: DictConfig, ctx: RunContext, load_weights: bool = True) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self._check_config()
        torch.manual_seed(ctx.seed)
        arch = resolve_arch(str(cfg.arch), cfg.get("model"))
        model = MaskedAutoencoderViT(arch, tuple(ctx.image_size), norm_pix_loss=bool(cfg.norm_pix_loss))
        self.pretrained = not is_none(cfg.pretrained)
        self.patch_embed_reinit = False
        if self.pretrained and load_weights:
            report = load_pretrained(model, str(cfg.pretrained))
            self.patch_embed_reinit = report.patch_embed_reinit
        # LoRA only makes sense on pretrained weights; pretrained=none trains every weight
        self.use_lora = self.pretrained and int(cfg.lora.rank) > 0
        trainable_set = str(cfg.get("trainable_set", "adapters_decoder"))
        if self.use_lora:
            lora_args = (int(cfg.lora.rank), float(cfg.lora.alpha), float(cfg.lora.dropout), bool(cfg.lora.mlp))
            apply_lora(model.blocks, *lora_args)
            if trainable_set == "reference":  # the reference code's decoder blocks are LoRA blocks too
                apply_lora(model.decoder_blocks, *lora_args)
        freeze = self.pretrained and bool(cfg.freeze_non_lora)
        train_pe = cfg.train_patch_embed
        train_pe = self.patch_embed_reinit if str(train_pe) == "auto" else bool(train_pe)
        set_trainable(model, freeze_non_lora=freeze, train_patch_embed=train_pe, trainable_set=trainable_set)
        self.model = model.to(self.device)
        self.trainable, self.total = count_parameters(model)
        log.info("lora_mae %s on %dx%d input (%dx%d patches): %s trainable / %s parameters (%.2f%%)%s", cfg.arch,
                 *ctx.image_size, *model.grid, f"{self.trainable:,}", f"{self.total:,}",
                 100.0 * self.trainable / max(1, self.total),
                 f", LoRA rank {int(cfg.lora.rank)}" if self.use_lora else ", no LoRA (full training)")
        self.hidden = interleaved_masks(model.grid, int(cfg.inference.num_masks),
                                        str(cfg.inference.get("mask_layout", "tiles")))  # [K, L], checked here
        self.history: list[float] = []
        self.train_log: list[dict] = []  # per epoch: stage, step, epoch, loss, lr (+ val_ratio when evaluated)
        self.stats: dict[str, torch.Tensor] | None = None  # per-pixel statistics of held-out normal training images
        self.selection: dict | None = None  # standardize=auto: the kind chosen on held-out normals, and why
        self.fitted = False
        self.timings: dict[str, float] = {}
        self.extra_predictions: dict[str, Prediction] = {}  # other map kinds of the same model, after predict()

    def _check_config(self) -> None:
        c = self.cfg
        t = c.train
        aug = t.get("augment") or {}
        checks = [
            (0.0 < float(t.mask_ratio) < 1.0, f"method.train.mask_ratio={t.mask_ratio} must be in (0, 1)"),
            (int(t.epochs) >= 1, f"method.train.epochs={t.epochs} must be >= 1"),
            (int(t.batch_size) >= 1, f"method.train.batch_size={t.batch_size} must be >= 1"),
            (int(t.accum_steps) >= 1, f"method.train.accum_steps={t.accum_steps} must be >= 1"),
            (float(t.blr) > 0, f"method.train.blr={t.blr} must be > 0"),
            (int(t.warmup_epochs) >= 0, f"method.train.warmup_epochs={t.warmup_epochs} must be >= 0"),
            (int(c.inference.num_masks) >= 2, f"method.inference.num_masks={c.inference.num_masks} must be >= 2"),
            (str(c.inference.image_score) in ("max", "topk_mean"),
             f"method.inference.image_score={c.inference.image_score!r} must be max or topk_mean"),
            (str(c.train_patch_embed) in ("auto", "True", "False", "true", "false"),
             f"method.train_patch_embed={c.train_patch_embed!r} must be auto, true or false"),
            (int(c.lora.rank) >= 0, f"method.lora.rank={c.lora.rank} must be >= 0 (0: no LoRA)"),
            (str(c.get("trainable_set", "adapters_decoder")) in TRAINABLE_SETS,
             f"method.trainable_set={c.get('trainable_set')!r} must be one of {', '.join(TRAINABLE_SETS)}"),
            (str(c.inference.get("mask_layout", "tiles")) in MASK_LAYOUTS,
             f"method.inference.mask_layout={c.inference.get('mask_layout')!r} must be one of {', '.join(MASK_LAYOUTS)}"),
            (0.0 <= float(t.get("holdout", 0.0)) < 1.0, f"method.train.holdout={t.get('holdout')} must be in [0, 1)"),
            (str(c.inference.get("standardize", "none")) in STANDARDIZE + ("auto",),
             f"method.inference.standardize={c.inference.get('standardize')!r} must be one of "
             f"{', '.join(STANDARDIZE)} or auto"),
            (str(c.inference.get("standardize", "none")) == "none" or float(t.get("holdout", 0.0)) > 0,
             f"method.inference.standardize={c.inference.get('standardize')} needs held-out normal images for its "
             f"statistics: set method.train.holdout (e.g. 0.2)"),
            (float(aug.get("resize_factor", 1.0)) >= 1.0,
             f"method.train.augment.resize_factor={aug.get('resize_factor')} must be >= 1 (1: no crop jiggle)"),
            (float(aug.get("brightness", 0.0)) >= 0 and float(aug.get("saturation", 0.0)) >= 0,
             "method.train.augment.brightness / saturation must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    # --- training -----------------------------------------------------------------------------------------
    def _decode(self, loader: DataLoader) -> torch.Tensor:
        """All training images [N, 3, H, W] (normalised, CPU), decoded once."""
        images = [batch["image"] for batch in progress(loader, "lora_mae: decode", self.ctx.progress, unit="batch")]
        if not images:
            raise ValueError("empty training loader")
        x = torch.cat(images)
        expect = tuple(self.ctx.image_size)
        if tuple(x.shape[-2:]) != expect:
            raise ConfigError(f"training images are {tuple(x.shape[-2:])}, the model was built for {expect}")
        return x

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW (betas 0.9, 0.95); no weight decay on biases, norms and tokens."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith("_token") else decay).append(p)
        groups = [{"params": decay, "weight_decay": float(self.cfg.train.weight_decay)},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=0.0, betas=(0.9, 0.95))

    def _autocast(self):
        amp = self.device.type == "cuda" and bool(self.cfg.train.get("amp", True)) and torch.cuda.is_bf16_supported()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=amp)

    def _state_path(self) -> Path | None:
        return None if self.ctx.work_dir is None else Path(self.ctx.work_dir) / TRAIN_STATE_FILE

    def _config_json(self) -> str:
        return json.dumps(OmegaConf.to_container(self.cfg, resolve=True), sort_keys=True)

    def _save_train_state(self, path: Path, opt: torch.optim.Optimizer, gen: torch.Generator, epoch: int, step: int) -> None:
        torch_save_atomic({"method": "lora_mae", "version": CHECKPOINT_VERSION, "config": self._config_json(),
                           "seed": self.ctx.seed, "image_size": list(self.ctx.image_size), "epoch": epoch, "step": step,
                           "model": self.model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                           "history": list(self.history), "train_log": list(self.train_log)}, path)

    def _try_resume(self, path: Path | None, opt: torch.optim.Optimizer, gen: torch.Generator) -> tuple[int, int]:
        """(epoch, optimizer step) to continue from; (0, 0) without a matching training checkpoint."""
        if path is None or not path.is_file() or not bool(self.cfg.train.resume):
            return 0, 0
        state = torch_load(str(path))
        same = (state.get("method") == "lora_mae" and state.get("version") == CHECKPOINT_VERSION
                and state.get("config") == self._config_json() and state.get("seed") == self.ctx.seed
                and list(state.get("image_size", [])) == list(self.ctx.image_size))
        if not same:
            log.warning("ignoring training checkpoint %s: written for another config / version", path)
            return 0, 0
        self.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        self.history = list(state["history"])
        self.train_log = list(state.get("train_log", []))
        log.info("resuming lora_mae training from %s at epoch %d", path, state["epoch"])
        return int(state["epoch"]), int(state["step"])

    def fit(self, train_loader: DataLoader) -> None:
        """Decode the normal images once, then train the MAE objective (random masks, optional light augmentation)."""
        t0 = time.perf_counter()
        images = self._decode(train_loader)  # [N, 3, H, W]
        t1 = time.perf_counter()
        self.train_on(images)
        self.timings.update(decode_s=t1 - t0, train_s=time.perf_counter() - t1)

    def _batch(self, pool: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Training batch [B, 3, H, W]: the images ``idx`` of ``pool`` (enlarged when jiggling), cropped and jittered."""
        aug = self.cfg.train.get("augment") or {}
        x = random_crops(pool[idx], tuple(self.ctx.image_size), gen)  # identity when the pool is not enlarged
        x = colour_jitter(x, float(aug.get("brightness", 0.0)), float(aug.get("saturation", 0.0)), gen)
        return x.to(self.device, non_blocking=True)

    @torch.no_grad()
    def error_ratio(self, images: torch.Tensor, reference: torch.Tensor) -> float:
        """Mean squared error of the K-pass reconstruction of ``images`` [N, 3, H, W] divided by that of the
        ``reference`` image [3, H, W] (the mean training image): below 1 the model uses more than the mean image."""
        model_err = torch.cat([self.anomaly_maps(images[i:i + 32]).cpu() for i in range(0, len(images), 32)])
        return float(model_err.mean()) / max(float((images - reference).pow(2).mean()), 1e-12)

    def train_on(self, images: torch.Tensor, stop_epoch: int | None = None) -> None:
        """The training loop over in-memory images [N, 3, H, W]; ``stop_epoch`` ends early (resume tests).

        ``train.holdout`` of the images are kept out of training: the held-out "model error / mean-image error"
        ratio is logged during training (``val_ratio`` in :attr:`train_log`) and, after training, their per-pixel
        error mean and standard deviation are kept for ``inference.standardize``.
        """
        t = self.cfg.train
        fit_idx, hold_idx = holdout_split(images.shape[0], float(t.get("holdout", 0.0)), self.ctx.seed)
        held, images = images[hold_idx], images[fit_idx]
        mean_image = images.mean(0)  # [3, H, W], the reference of val_ratio
        aug = t.get("augment") or {}
        pool = enlarge(images, float(aug.get("resize_factor", 1.0)))  # [N, 3, H', W'], crops drawn per batch
        n = images.shape[0]
        bs, accum, epochs = min(int(t.batch_size), n), int(t.accum_steps), int(t.epochs)
        micro_per_epoch = math.ceil(n / bs)
        steps_per_epoch = math.ceil(micro_per_epoch / accum)
        total_steps, warmup_steps = epochs * steps_per_epoch, int(t.warmup_epochs) * steps_per_epoch
        base_lr = float(t.blr) * bs * accum / 256  # the linear scaling rule on the effective batch
        min_lr = float(t.get("min_lr", 0.0))
        every = int(t.get("checkpoint_every", 0))
        val_every = int(t.get("val_every", 0)) or max(1, epochs // 20)
        opt = self._optimizer()
        gen = torch.Generator().manual_seed(self.ctx.seed)
        path = self._state_path()
        start_epoch, step = self._try_resume(path, opt, gen)
        log.info("lora_mae training: %d images (%d held out), %d epochs, batch %d x %d accumulation, lr %.2e", n,
                 len(held), epochs, bs, accum, base_lr)
        self.model.train()
        L = self.model.num_patches
        lr = lr_at(step, total_steps, warmup_steps, base_lr, min_lr)
        bar = progress(range(start_epoch, epochs), "lora_mae: train", self.ctx.progress, unit="epoch")
        for epoch in bar:
            perm = torch.randperm(n, generator=gen)  # [N]
            epoch_loss = 0.0
            for m, start in enumerate(range(0, n, bs)):
                group_start = (m // accum) * accum
                group_size = min(accum, micro_per_epoch - group_start)  # the last group may be shorter
                x = self._batch(pool, perm[start : start + bs], gen)  # [B, 3, H, W]
                keep = random_keep(x.shape[0], L, float(t.mask_ratio), gen, self.device)  # [B, L_keep]
                with self._autocast():
                    pred = self.model(x, keep)  # [B, L, p*p*3]
                loss = self.model.loss(x, pred, keep)
                (loss / group_size).backward()
                epoch_loss += loss.item() * x.shape[0]
                if m - group_start + 1 == group_size:
                    lr = lr_at(step, total_steps, warmup_steps, base_lr, min_lr)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    step += 1
            self.history.append(epoch_loss / n)
            done = epoch + 1
            entry = {"stage": "train", "step": step, "epoch": done, "loss": self.history[-1], "lr": lr}
            if len(held) and (done % val_every == 0 or done == epochs or epoch == 0):
                entry["val_ratio"] = self.error_ratio(held, mean_image)
                self.model.train()
            self.train_log.append(entry)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{self.history[-1]:.4f}", lr=f"{lr:.2e}")
            if epoch == 0 or done % max(1, epochs // 10) == 0 or done == epochs:
                log.info("epoch %d/%d: loss %.4f%s", done, epochs, self.history[-1],
                         f", held-out error / mean-image error {entry['val_ratio']:.3f}" if "val_ratio" in entry else "")
            if path is not None and every > 0 and (done % every == 0 or done == epochs):
                self._save_train_state(path, opt, gen, done, step)
            if stop_epoch is not None and done >= stop_epoch:
                return
        self.model.eval()
        if len(held):
            self.fit_statistics(held)
        self.fitted = True
        if path is not None and path.is_file() and not bool(t.get("keep_checkpoint", False)):
            path.unlink()  # training finished: the fitted model is saved by save()

    # --- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> reconstruction minus input [B, 3, H, W], each pixel from the pass hiding it."""
        model = self.model.eval()
        x = x.to(self.device)
        b = x.shape[0]
        p2 = model.patch_size ** 2
        out = torch.zeros_like(x, dtype=torch.float32)
        for hidden in self.hidden.to(self.device):  # [L] per mask
            keep = visible_indices(hidden).expand(b, -1)  # [B, L_keep]
            with self._autocast():
                pred = model(x, keep)  # [B, L, p*p*3]
            pixels_hidden = model.unpatchify(hidden.float()[None, :, None].expand(1, -1, p2), channels=1)[0]  # [1, H, W]
            out += model.residual(x, pred) * pixels_hidden
        return out

    @torch.no_grad()
    def anomaly_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> unsmoothed squared-error maps [B, H, W] (channel mean), each pixel from the pass
        hiding it."""
        return self.residuals(x).pow(2).mean(dim=1)

    @torch.no_grad()
    def statistics(self, held: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel statistics of normal images [N, 3, H, W]: residual mean / std [3, H, W] and squared error
        mean / std [H, W] (for ``inference.standardize``)."""
        res = torch.cat([self.residuals(held[i:i + 32]).cpu() for i in range(0, len(held), 32)])  # [N, 3, H, W]
        err = res.pow(2).mean(1)  # [N, H, W]
        return {"res_mean": res.mean(0), "res_std": res.std(0), "err_mean": err.mean(0), "err_std": err.std(0)}

    @torch.no_grad()
    def fit_statistics(self, held: torch.Tensor) -> None:
        """The held-out statistics of ``inference.standardize``; with ``standardize=auto`` also the map kind,
        chosen on synthetic anomalies pasted into these images (:func:`adbench.mapselect.choose_map_kind`)."""
        self.stats = self.statistics(held)
        if str(self.cfg.inference.get("standardize", "none")) == "auto":
            self.selection = self.choose_kind(held).to_dict()
            log.info("lora_mae: standardize=auto chose %s (synthetic-anomaly pixel + image AUROC / 2: %s)",
                     self.selection["chosen"], self.selection["score"])

    def choose_kind(self, held: torch.Tensor):
        """Score every map kind on synthetic anomalies in the held-out images [N, 3, H, W] (normalised)."""
        from adbench.data import denormalize, normalize
        from adbench.mapselect import choose_map_kind

        inf = self.cfg.inference
        floor = float(inf.get("std_floor", 0.1))
        radius = inf.get("smoothing_radius")

        def maps(images01: torch.Tensor, stats: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
            res = torch.cat([self.residuals(normalize(images01[i:i + 32])).cpu() for i in range(0, len(images01), 32)])
            return {how: gaussian_blur(map_of_kind(res, how, stats, floor), float(inf.smoothing_sigma),
                                       None if radius is None else int(radius)).numpy() for how in STANDARDIZE}

        return choose_map_kind(
            denormalize(held).clamp(0, 1), list(AUTO_CANDIDATES), lambda x: self.statistics(normalize(x)), maps,
            lambda m: image_scores(torch.from_numpy(m), str(inf.image_score), int(inf.topk)).numpy(), self.ctx.seed)

    @property
    def standardize(self) -> str:
        """The map kind in use: ``inference.standardize``, or the one chosen per run when it is ``auto``."""
        how = str(self.cfg.inference.get("standardize", "none"))
        if how == "auto":
            if self.selection is None:
                raise RuntimeError("lora_mae: inference.standardize=auto chooses the kind in fit(); fit or load first")
            return str(self.selection["chosen"])
        return how

    def maps_by_kind(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unsmoothed maps [B, H, W] of every kind this model can give, from one K-pass reconstruction, keyed by
        the ``inference.standardize`` value that selects them: ``none`` (squared error, channel mean) always;
        with the held-out statistics also ``error`` (its per-pixel z-score) and ``residual`` (RMS over channels
        of the per-pixel, per-channel z-scores of the residual)."""
        res = self.residuals(x)  # [B, 3, H, W]
        if self.stats is None:
            return {"none": map_of_kind(res, "none", None, 0.0)}
        floor = float(self.cfg.inference.get("std_floor", 0.1))
        st = {k: v.to(self.device) for k, v in self.stats.items()}
        return {how: map_of_kind(res, how, st, floor) for how in STANDARDIZE}

    def scored_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Unsmoothed maps [B, H, W] per ``inference.standardize`` (see :meth:`maps_by_kind`)."""
        how = self.standardize
        maps = self.maps_by_kind(x)
        if how not in maps:
            raise RuntimeError(f"lora_mae: inference.standardize={how} needs the held-out statistics of fit()")
        return maps[how]

    def predict(self, test_loader: DataLoader) -> Prediction:
        """Image scores [N] and smoothed maps [N, H, W] of ``inference.standardize`` (see :meth:`maps_by_kind`).

        The other map kinds of the same model and the same reconstructions go to ``extra_predictions``, named
        ``raw`` (the unstandardised squared error, standardize=none), ``error`` and ``residual`` (the latter two
        only with held-out statistics), smoothed and scored alike.
        """
        inf = self.cfg.inference
        how = self.standardize
        radius = inf.get("smoothing_radius")
        scores: dict[str, list[torch.Tensor]] = {}
        maps: dict[str, list[torch.Tensor]] = {}
        t0 = time.perf_counter()
        for batch in progress(test_loader, "lora_mae: predict", self.ctx.progress, unit="batch"):
            kinds = self.maps_by_kind(batch["image"])  # kind -> [B, H, W]
            if how not in kinds:
                raise RuntimeError(f"lora_mae: inference.standardize={how} needs the held-out statistics of fit()")
            for kind, raw in kinds.items():
                smooth = gaussian_blur(raw, float(inf.smoothing_sigma), None if radius is None else int(radius))
                scores.setdefault(kind, []).append(image_scores(smooth, str(inf.image_score), int(inf.topk)).cpu())
                maps.setdefault(kind, []).append(smooth.cpu())
        self.timings["predict_s"] = time.perf_counter() - t0
        preds = {kind: Prediction(torch.cat(scores[kind]).numpy(), torch.cat(maps[kind]).numpy()) for kind in maps}
        main = preds.pop(how)
        self.extra_predictions = {("raw" if kind == "none" else kind): p for kind, p in preds.items()}
        return main

    # --- persistence --------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``lora_mae.pt``: config, input size, LoRA / freezing flags, training log, held-out error statistics
        and the full state dict."""
        save_method_state(Path(directory) / MODEL_FILE, "lora_mae", CHECKPOINT_VERSION, self.cfg,
                          image_size=list(self.ctx.image_size), use_lora=self.use_lora,
                          patch_embed_reinit=self.patch_embed_reinit, history=list(self.history),
                          train_log=list(self.train_log), stats=self.stats, selection=self.selection,
                          model=self.model.state_dict())

    @classmethod
    def load(cls, directory: str | Path, ctx: RunContext) -> "LoRAMAE":
        """Restore a fitted model without refitting or downloading weights (everything is in the file)."""
        state, cfg = load_method_state(Path(directory) / MODEL_FILE, "lora_mae", CHECKPOINT_VERSION)
        ctx = replace(ctx, image_size=tuple(state["image_size"]))
        self = cls(cfg, ctx, load_weights=False)  # same structure (LoRA layers where they were), no download
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.history = list(state.get("history", []))
        self.train_log = list(state.get("train_log", []))
        self.stats = state.get("stats")
        self.selection = state.get("selection")
        self.patch_embed_reinit = bool(state.get("patch_embed_reinit", False))
        self.fitted = True
        return self
