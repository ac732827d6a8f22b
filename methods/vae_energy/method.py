"""VAE + iterative energy-based projection adapter: train the VAE on normal images, score by projection."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader

from adbench.api import Prediction, RunContext
from adbench.data import denormalize
from adbench.data.errors import ConfigError
from adbench.registry import register_method
from adbench.utils import load_method_state, progress, save_method_state, torch_load, torch_save_atomic

from .losses import RECON_LOSSES, kl_divergence, reconstruction_loss
from .model import ConvVAE
from .projection import project
from .tiles import stitch, tile

CHECKPOINT_VERSION = 2
SCORES = ("projection", "reconstruction")
IMAGE_SCORES = ("max", "topk")
FLIPS = ("texture", "always", "never")
log = logging.getLogger(__name__)


def _check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first option with a value that cannot work."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(cfg.loss in RECON_LOSSES, f"method.loss={cfg.loss!r} is not one of {', '.join(RECON_LOSSES)}")
    ploss = cfg.projection.get("loss")
    need(ploss is None or ploss in RECON_LOSSES,
         f"method.projection.loss={ploss!r}: null or one of {', '.join(RECON_LOSSES)}")
    need(cfg.score in SCORES + ("auto",), f"method.score={cfg.score!r} is not one of {', '.join(SCORES)} or auto")
    need(str(cfg.get("standardize", False)) in ("True", "False", "auto"),
         f"method.standardize={cfg.get('standardize')!r} must be true, false or auto")
    need(cfg.image_score in IMAGE_SCORES,
         f"method.image_score={cfg.image_score!r} is not one of {', '.join(IMAGE_SCORES)}")
    need(cfg.train.flips in FLIPS, f"method.train.flips={cfg.train.flips!r} is not one of {', '.join(FLIPS)}")
    n = len(cfg.channels)
    need(n >= 1 and int(cfg.input_size) % 2**n == 0,
         f"method.input_size={cfg.input_size} must be divisible by 2**len(method.channels)={2**n}")
    need(int(cfg.z_dim) >= 1, f"method.z_dim={cfg.z_dim} must be >= 1")
    need(int(cfg.train.epochs) >= 1, f"method.train.epochs={cfg.train.epochs} must be >= 1")
    need(int(cfg.train.batch_size) >= 2, f"method.train.batch_size={cfg.train.batch_size} must be >= 2 (BatchNorm)")
    need(float(cfg.train.lr) > 0, f"method.train.lr={cfg.train.lr} must be > 0")
    hold = float(cfg.train.get("holdout") or 0)
    need(0 <= hold < 1, f"method.train.holdout={hold} must be in [0, 1)")
    need(not cfg.get("standardize", False) or hold > 0,
         f"method.standardize={cfg.get('standardize')} needs held-out normal training images: set "
         f"method.train.holdout > 0 (e.g. 0.1)")
    need(cfg.score != "auto" or hold > 0,
         "method.score=auto chooses on held-out normal training images: set method.train.holdout > 0 (e.g. 0.1)")
    need(not cfg.train.get("keep_best", False) or hold > 0,
         "method.train.keep_best=true needs held-out normal training images: set method.train.holdout > 0")
    need(int(cfg.train.get("val_every") or 1) >= 1, f"method.train.val_every={cfg.train.get('val_every')} must be >= 1")
    need(int(cfg.projection.steps) >= 0, f"method.projection.steps={cfg.projection.steps} must be >= 0")
    pkl = cfg.projection.get("kl_weight")
    need(pkl is None or float(pkl) >= 0, f"method.projection.kl_weight={pkl}: null (= method.kl_weight) or >= 0")
    need(float(cfg.projection.alpha) > 0, f"method.projection.alpha={cfg.projection.alpha} must be > 0")
    need(float(cfg.smoothing_sigma) >= 0, f"method.smoothing_sigma={cfg.smoothing_sigma} must be >= 0")
    need(int(cfg.topk) >= 1, f"method.topk={cfg.topk} must be >= 1")
    r, s, st = int(cfg.texture.resize), int(cfg.input_size), int(cfg.texture.stride)
    need(r >= s and st >= 1 and (r - s) % st == 0,
         f"method.texture.resize={r} must be tiled exactly by crops of method.input_size={s} "
         f"at method.texture.stride={st}")


def zscore(maps: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """Per-pixel z-score of maps [B, H, W] against held-out statistics [H, W] (std already floored)."""
    return ((maps - mean.numpy()) / std.numpy()).astype(np.float32)


def check_input_side(height: int, width: int, side: int, texture: bool) -> None:
    """Raise ConfigError when images of ``height`` x ``width`` would be upsampled to the model side ``side``."""
    if min(int(height), int(width)) >= side:
        return
    option = "method.texture.resize" if texture else "method.input_size"
    raise ConfigError(
        f"vae_energy would upsample the dataset's {height}x{width} images to {option}={side}: set "
        f"dataset.image_size>={side} dataset.crop_size=null (as preset=paper / preset=cpu do) or lower {option}")


@register_method("vae_energy")
class VAEEnergy:
    """VAE with iterative energy-based projection (Dehaene et al., ICLR 2020).

    Objects: the whole loader image resized down to ``input_size``. Textures: the loader image resized down to
    ``texture.resize``; training on random ``input_size`` crops (with flips), scoring tile by tile with the maps
    stitched. Images smaller than that side are refused (no upsampling). Maps are |x_0 - x_T| (or
    |x_0 - f(x_0)| with ``score: reconstruction``) averaged over channels, resized to the loader resolution and
    Gaussian-smoothed; with ``standardize`` each pixel is then z-scored with the mean and standard deviation of
    the same maps on held-out normal training images (``train.holdout``). Other maps of the same model are
    offered in ``extra_predictions`` (``reconstruction``; with ``standardize`` also the unstandardised ``*_raw``).
    After ``fit``, ``train_log`` holds one entry per epoch: loss, lr and, with a holdout, ``val_ratio`` = the
    held-out images' squared reconstruction error over their squared error to the mean training image.
    """

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        _check_config(cfg)
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.in_channels = 1 if ctx.grayscale else 3
        self.texture = bool(ctx.is_texture)
        if ctx.image_size:
            check_input_side(*ctx.image_size, self._side, self.texture)
        torch.manual_seed(ctx.seed)
        self.model = ConvVAE(self.in_channels, int(cfg.input_size), list(cfg.channels), int(cfg.z_dim)).to(self.device)
        self.fitted = False
        self.history: list[float] = []  # mean training loss per epoch
        self.train_log: list[dict] = []  # one entry per epoch (stage, step, loss, lr, val_ratio)
        self.norm_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # kind -> (mean [H, W], std [H, W])
        self.selection: dict | None = None  # score / standardize = auto: the map chosen on held-out normals, and why
        self.timings: dict[str, float] = {}
        self.extra_predictions: dict[str, Prediction] = {}

    # ---- image handling -------------------------------------------------------------------------------------
    @property
    def _side(self) -> int:
        """Side of the model-space images: the crop source for textures, the model input for objects."""
        return int(self.cfg.texture.resize) if self.texture else int(self.cfg.input_size)

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """Loader images [B, 3, H, W] (ImageNet-normalised) -> [B, C, side, side] in [0, 1] on the device.

        Only ever downsamples (antialiased); smaller images raise ConfigError.
        """
        check_input_side(images.shape[-2], images.shape[-1], self._side, self.texture)
        x = denormalize(images.to(self.device).float())  # [B, 3, H, W]
        if self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)  # [B, 1, H, W]
        side = self._side
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        return x

    def _decode_all(self, loader: DataLoader) -> tuple[torch.Tensor, tuple[int, int]]:
        """The whole (small) training set once, in model space: ([N, C, side, side] float16 on CPU, loader H x W)."""
        parts, size = [], None
        for b in progress(loader, "vae_energy: decode", self.ctx.progress, unit="batch"):
            size = tuple(b["image"].shape[-2:])
            parts.append(self.to_model_space(b["image"]).half().cpu())
        if not parts:
            raise ValueError("empty training loader")
        return torch.cat(parts), size

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random ``input_size`` crops (textures) and random flips (per ``train.flips``): [B, C, s, s]."""
        b = x.shape[0]
        s = int(self.cfg.input_size)
        if self.texture:
            r = x.shape[-1]
            offs = torch.randint(0, r - s + 1, (b, 2), generator=g).tolist()
            x = torch.stack([x[i, :, oy : oy + s, ox : ox + s] for i, (oy, ox) in enumerate(offs)])
        flips = self.cfg.train.flips
        if flips == "always" or (flips == "texture" and self.texture):
            h, v = (torch.rand(2, b, generator=g) < 0.5).to(x.device)
            x = torch.where(h[:, None, None, None], x.flip(-1), x)
            x = torch.where(v[:, None, None, None], x.flip(-2), x)
        return x

    def _model_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space images [B, C, side, side] -> what the VAE sees: tiles (textures) or the images [B', C, s, s]."""
        return tile(x, int(self.cfg.input_size), int(self.cfg.texture.stride)) if self.texture else x

    # ---- training -------------------------------------------------------------------------------------------
    def _train_state_path(self) -> Path:
        if self.ctx.work_dir is None:
            raise ConfigError("method.train.checkpoint_every / method.train.resume need a run work_dir "
                              "(run through adbench)")
        return Path(self.ctx.work_dir) / "vae_energy_train.pt"

    def _split_holdout(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (train, held out) of the ``train.holdout`` fraction of normal images kept out of training."""
        frac = float(self.cfg.train.get("holdout") or 0)
        n_hold = min(max(1, round(frac * n)), n - 2) if frac > 0 else 0
        if frac > 0 and n_hold < 1:
            raise ValueError(f"method.train.holdout={frac} leaves too few of the {n} training images")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.ctx.seed + 7919))
        return perm[n_hold:].sort().values, perm[:n_hold].sort().values

    @torch.no_grad()
    def val_ratio(self, held: torch.Tensor, mean_input: torch.Tensor) -> float:
        """Held-out images [H, C, side, side]: sum of squared errors of f(x) over that of the mean input [C, s, s]."""
        was_training = self.model.training
        self.model.eval()
        num = den = 0.0
        for i in range(0, held.shape[0], 8):
            x = self._model_inputs(held[i : i + 8].to(self.device).float())  # [b, C, s, s]
            num += ((self.model.reconstruct(x) - x) ** 2).sum().item()
            den += ((mean_input.to(self.device) - x) ** 2).sum().item()
        self.model.train(was_training)
        return num / max(den, 1e-12)

    def fit(self, train_loader: DataLoader) -> None:
        """Train the VAE (reconstruction + KL, Adam) on the normal images, held in memory."""
        tc = self.cfg.train
        t0 = time.perf_counter()
        all_data, size = self._decode_all(train_loader)  # [N, C, side, side]
        train_idx, hold_idx = self._split_holdout(all_data.shape[0])
        data, held = all_data[train_idx], all_data[hold_idx]
        # the "mean image" the model must beat, in model-input space: [C, s, s]
        mean_input = self._model_inputs(data.float()).mean(dim=0) if len(held) else None
        t1 = time.perf_counter()
        n, bs = data.shape[0], int(tc.batch_size)
        lr = float(tc.lr)
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        g = torch.Generator().manual_seed(self.ctx.seed)
        start = 0
        every = int(tc.get("checkpoint_every") or 0)
        val_every = int(tc.get("val_every") or 1)
        if tc.get("resume", False) and self._train_state_path().is_file():
            state = torch_load(str(self._train_state_path()), self.device)
            self.model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            g.set_state(state["generator"].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
            start, self.history = int(state["epoch"]), [float(v) for v in state["history"]]
            self.train_log = [dict(e) for e in state.get("train_log", [])]
            log.info("vae_energy: resumed training at epoch %d from %s", start, self._train_state_path())
        beta = float(self.cfg.kl_weight)
        max_s = float(tc.max_minutes) * 60 if tc.get("max_minutes") else float("inf")
        epoch_s = 0.0
        step = int(self.train_log[-1]["step"]) if self.train_log else 0
        best: tuple[float, int, dict | None] = (float("inf"), 0, None)  # (val_ratio, epoch, weights) on the holdout
        self.model.train()
        bar = progress(range(start, int(tc.epochs)), "vae_energy: train", self.ctx.progress, unit="epoch")
        for epoch in bar:
            if time.perf_counter() - t1 + epoch_s > max_s:
                log.warning("vae_energy: stopping after %d epochs, method.train.max_minutes=%s reached",
                            epoch, tc.max_minutes)
                break
            te = time.perf_counter()
            perm = torch.randperm(n, generator=g)
            total, seen = 0.0, 0
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                x = self._augment(data[idx].to(self.device).float(), g)  # [B, C, s, s]
                recon, mu, logvar = self.model(x)  # [B, C, s, s], [B, z], [B, z]
                loss = (reconstruction_loss(recon, x, str(self.cfg.loss)) + beta * kl_divergence(mu, logvar)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                total += loss.item() * len(idx)
                seen += len(idx)
            self.history.append(total / max(seen, 1))
            entry = {"stage": "train", "step": step, "epoch": epoch + 1, "loss": self.history[-1], "lr": lr}
            if mean_input is not None and ((epoch + 1) % val_every == 0 or epoch + 1 == int(tc.epochs)):
                if tc.get("bn_recalibrate", False):
                    self._recalibrate_bn(data)
                entry["val_ratio"] = self.val_ratio(held, mean_input)
                if entry["val_ratio"] < best[0]:
                    best = (entry["val_ratio"], epoch + 1, copy.deepcopy(self.model.state_dict()))
            self.train_log.append(entry)
            epoch_s = time.perf_counter() - te
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{self.history[-1]:.1f}", **({"val_ratio": f"{entry['val_ratio']:.3f}"}
                                                                   if "val_ratio" in entry else {}))
            if every and (epoch + 1) % every == 0:
                self._save_train_state(opt, g, epoch + 1)
        if tc.get("keep_best", False) and best[2] is not None:
            self.model.load_state_dict(best[2])  # the epoch with the lowest held-out val_ratio
            self.timings.update(best_epoch=float(best[1]), best_val_ratio=float(best[0]))
        elif tc.get("bn_recalibrate", False):
            self._recalibrate_bn(data)
        self.model.eval()
        self.fitted = True
        t2 = time.perf_counter()
        if self.cfg.get("standardize", False):
            self.norm_stats = self._held_out_statistics(held, size)
        if self.auto:
            self.selection = self._choose_map(held, size).to_dict()
            log.info("vae_energy: chose the %s map (synthetic-anomaly pixel + image AUROC / 2: %s)",
                     self.selection["chosen"], self.selection["score"])
        if mean_input is not None:
            if "val_ratio" not in self.train_log[-1]:
                self.train_log[-1]["val_ratio"] = self.val_ratio(held, mean_input)
            self.timings["val_ratio"] = self.val_ratio(held, mean_input)  # of the model kept
        self.timings.update(decode_s=t1 - t0, train_s=t2 - t1, epochs_done=float(len(self.history)),
                            steps_done=float(step), n_holdout=float(len(held)), statistics_s=time.perf_counter() - t2)

    @torch.no_grad()
    def _recalibrate_bn(self, data: torch.Tensor) -> None:
        """Recompute every BatchNorm's running statistics as exact averages over the training images (train-mode
        passes without gradient; weights untouched), so eval-mode outputs match the current weights rather than
        the last few batches. Uses no global random state."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        was_training = self.model.training
        self.model.train()
        g = torch.Generator().manual_seed(self.ctx.seed + 104729)
        bs = int(self.cfg.train.batch_size)
        for i in range(0, data.shape[0] - 1, bs):
            x = self._augment(data[i : i + bs].to(self.device).float(), g)  # crops for textures: [b, C, s, s]
            if x.shape[0] >= 2:
                self.model.decode(self.model.encode(x)[0])
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        self.model.train(was_training)

    def _save_train_state(self, opt: torch.optim.Optimizer, g: torch.Generator, epoch: int) -> None:
        torch_save_atomic({"model": self.model.state_dict(), "optimizer": opt.state_dict(), "generator": g.get_state(),
                           "torch_rng": torch.get_rng_state(), "epoch": epoch, "history": self.history,
                           "train_log": self.train_log}, self._train_state_path())

    def _held_out_statistics(self, held: torch.Tensor, size: tuple[int, int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-pixel mean and std [H, W] of the smoothed maps of each kind on the held-out normal images."""
        maps: dict[str, list[np.ndarray]] = {}
        pc = self.cfg.projection
        chunk = int(pc.get("batch_size") or 32)
        for i in range(0, held.shape[0], chunk):
            for kind, m in self._smoothed_maps(held[i : i + chunk].to(self.device).float(), size).items():
                maps.setdefault(kind, []).append(m)
        stats = {}
        for kind, parts in maps.items():
            a = torch.from_numpy(np.concatenate(parts)).double()  # [H', H, W]
            mean, std = a.mean(0), a.std(0, unbiased=a.shape[0] > 1)
            # a floor on the std: a few held-out images can leave near-zero spread at a pixel
            floor = max(float(std.mean()) * float(self.cfg.get("std_floor", 0.1)), 1e-8)
            stats[kind] = (mean.float(), std.clamp_min(floor).float())
        return stats

    # ---- the map kind ----------------------------------------------------------------------------------------
    @property
    def auto(self) -> bool:
        """Whether the map is chosen per run (``score=auto`` or ``standardize=auto``)."""
        return self.cfg.score == "auto" or str(self.cfg.get("standardize", False)) == "auto"

    def candidates(self) -> list[str]:
        """Map kinds ``auto`` chooses from, the default first: the score's standardised map, then its raw map
        (``standardize=auto``); both scores with ``score=auto``."""
        scores = list(SCORES) if self.cfg.score == "auto" else [str(self.cfg.score)]
        how = str(self.cfg.get("standardize", False))
        suffixes = {"auto": ["", "_raw"], "True": [""], "False": ["_raw"]}[how]
        return [score + suffix for score in scores for suffix in suffixes]

    @property
    def map_kind(self) -> str:
        """The map in use: ``projection`` / ``reconstruction`` (standardised with ``standardize``) or ``*_raw``."""
        if self.auto:
            if self.selection is None:
                raise RuntimeError("vae_energy: score / standardize = auto chooses the map in fit(); fit or load first")
            return str(self.selection["chosen"])
        return str(self.cfg.score) + ("" if self.norm_stats else "_raw")

    def _choose_map(self, held: torch.Tensor, size: tuple[int, int]):
        """Score the candidate maps on synthetic anomalies in the held-out model-space images [N, C, s, s]."""
        from adbench.mapselect import choose_map_kind

        def maps(images: torch.Tensor, stats: dict) -> dict[str, np.ndarray]:
            out: dict[str, list[np.ndarray]] = {}
            chunk = int(self.cfg.projection.get("batch_size") or 32)
            for i in range(0, images.shape[0], chunk):
                for kind, m in self._smoothed_maps(images[i : i + chunk].to(self.device), size).items():
                    out.setdefault(f"{kind}_raw", []).append(m)
                    if kind in stats:
                        out.setdefault(kind, []).append(zscore(m, *stats[kind]))
            return {k: np.concatenate(v) for k, v in out.items()}

        return choose_map_kind(held.float(), self.candidates(), lambda x: self._held_out_statistics(x, size), maps,
                               self._image_scores, self.ctx.seed)

    # ---- scoring --------------------------------------------------------------------------------------------
    def _maps_model_space(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, C, side, side] -> (reconstruction map, projection map or None), each [B, 1, side, side]."""
        stride = int(self.cfg.texture.stride)
        crops = self._model_inputs(x0)  # [B*T, C, s, s]
        pc = self.cfg.projection
        steps = int(pc.steps) if self.cfg.score in ("projection", "auto") else 0
        pkl = pc.get("kl_weight")
        kl_weight = float(self.cfg.kl_weight) if pkl is None else float(pkl)
        rec_maps, proj_maps = [], []
        chunk = int(pc.get("batch_size") or crops.shape[0])
        for i in range(0, crops.shape[0], chunk):
            c0 = crops[i : i + chunk]
            xt, rec = project(self.model, c0, steps=steps, alpha=float(pc.alpha), lam=float(pc.lam),
                              loss=str(pc.get("loss") or self.cfg.loss), kl_weight=kl_weight)
            rec_maps.append((c0 - rec).abs().mean(dim=1, keepdim=True))  # [b, 1, s, s]
            proj_maps.append((c0 - xt).abs().mean(dim=1, keepdim=True))
        rec_map = torch.cat(rec_maps)
        proj_map = torch.cat(proj_maps) if steps > 0 else None
        if self.texture:
            rec_map = stitch(rec_map, x0.shape[-1], stride)
            proj_map = stitch(proj_map, x0.shape[-1], stride) if proj_map is not None else None
        return rec_map, proj_map

    def _smooth(self, m: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Map [B, 1, side, side] -> smoothed maps [B, H, W] at the loader resolution."""
        up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0].cpu().numpy()  # [B, H, W]
        sigma = float(self.cfg.smoothing_sigma)
        if sigma > 0:
            up = np.stack([ndimage.gaussian_filter(a, sigma=sigma) for a in up])
        return up.astype(np.float32)

    def _smoothed_maps(self, x0: torch.Tensor, size: tuple[int, int]) -> dict[str, np.ndarray]:
        """Model-space images [B, C, side, side] -> {"reconstruction"[, "projection"]: maps [B, H, W]}."""
        rec_map, proj_map = self._maps_model_space(x0)
        out = {"reconstruction": self._smooth(rec_map, size)}
        if proj_map is not None:
            out["projection"] = self._smooth(proj_map, size)
        return out

    def _image_scores(self, maps: np.ndarray) -> np.ndarray:
        """Maps [B, H, W] -> image scores [B] (max, or mean of the ``topk`` highest pixels)."""
        flat = maps.reshape(maps.shape[0], -1)
        if self.cfg.image_score == "max":
            return flat.max(axis=1).astype(np.float32)
        k = min(int(self.cfg.topk), flat.shape[1])
        return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1).astype(np.float32)

    def _standardized(self, kind: str, maps: np.ndarray) -> np.ndarray:
        """Per-pixel z-score of maps [B, H, W] with the held-out statistics of ``kind``."""
        mean, std = self.norm_stats[kind]
        if tuple(mean.shape) != maps.shape[1:]:
            raise ConfigError(f"vae_energy: method.standardize statistics are {tuple(mean.shape)} but the test maps "
                              f"are {maps.shape[1:]}: predict at the dataset size the model was fitted with")
        return zscore(maps, mean, std)

    def predict(self, test_loader: DataLoader) -> Prediction:
        """Scores and maps of ``method.score``; the other maps of the same model go to extra_predictions."""
        if not self.fitted:
            raise RuntimeError("VAEEnergy.predict called before fit or load")
        self.model.eval()
        maps: dict[str, list[np.ndarray]] = {}
        t_model = 0.0
        for batch in progress(test_loader, "vae_energy: predict", self.ctx.progress, unit="batch"):
            images = batch["image"]  # [B, 3, H, W]
            tm = time.perf_counter()
            for kind, m in self._smoothed_maps(self.to_model_space(images), tuple(images.shape[-2:])).items():
                maps.setdefault(kind, []).append(m)
            t_model += time.perf_counter() - tm
        tp = time.perf_counter()
        out: dict[str, np.ndarray] = {}
        for kind, parts in maps.items():
            a = np.concatenate(parts)  # [N, H, W]
            out[f"{kind}_raw"] = a
            if self.norm_stats:
                out[kind] = self._standardized(kind, a)
        preds = {k: Prediction(self._image_scores(a), a) for k, a in out.items()}
        self.timings.update(predict_model_s=t_model, postprocess_s=time.perf_counter() - tp)
        if not self.norm_stats:  # unstandardised maps keep their plain names in records
            preds = {k.removesuffix("_raw"): p for k, p in preds.items()}
        kind = self.map_kind if self.norm_stats else self.map_kind.removesuffix("_raw")
        main = preds.pop(kind)
        self.extra_predictions = preds
        return main

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``vae_energy.pt``: config, channel/texture mode, VAE weights, training log, held-out statistics."""
        if not self.fitted:
            raise RuntimeError("VAEEnergy.save called before fit")
        save_method_state(Path(directory) / "vae_energy.pt", "vae_energy", CHECKPOINT_VERSION, self.cfg,
                          grayscale=self.in_channels == 1, is_texture=self.texture,
                          model=self.model.state_dict(), history=self.history, train_log=json.dumps(self.train_log),
                          norm_stats={k: torch.stack(v) for k, v in self.norm_stats.items()},
                          selection=json.dumps(self.selection))

    @classmethod
    def load(cls, directory: str | Path, ctx: RunContext) -> "VAEEnergy":
        """Restore a fitted model; channel count and texture mode come from the checkpoint."""
        state, cfg = load_method_state(Path(directory) / "vae_energy.pt", "vae_energy", CHECKPOINT_VERSION)
        ctx = dataclasses.replace(ctx, grayscale=bool(state["grayscale"]), is_texture=bool(state["is_texture"]))
        self = cls(cfg, ctx)
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.history = [float(v) for v in state["history"]]
        self.train_log = json.loads(state["train_log"])
        self.norm_stats = {k: (v[0], v[1]) for k, v in state["norm_stats"].items()}
        self.selection = json.loads(state.get("selection") or "null")
        self.fitted = True
        return self
