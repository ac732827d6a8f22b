"""VAE + iterative energy-based projection adapter: train the VAE on normal images, score by projection."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from scipy import ndimage
from torch.utils.data import DataLoader

from adbench.api import Prediction, RunContext
from adbench.data import denormalize
from adbench.data.errors import ConfigError
from adbench.registry import register_method
from adbench.utils import load_method_state, save_method_state, progress, torch_load

from .losses import RECON_LOSSES, kl_divergence, reconstruction_loss
from .model import ConvVAE
from .projection import project
from .tiles import stitch, tile

CHECKPOINT_VERSION = 1
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
    need(cfg.score in SCORES, f"method.score={cfg.score!r} is not one of {', '.join(SCORES)}")
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
    need(int(cfg.projection.steps) >= 0, f"method.projection.steps={cfg.projection.steps} must be >= 0")
    need(float(cfg.projection.alpha) > 0, f"method.projection.alpha={cfg.projection.alpha} must be > 0")
    need(float(cfg.smoothing_sigma) >= 0, f"method.smoothing_sigma={cfg.smoothing_sigma} must be >= 0")
    need(int(cfg.topk) >= 1, f"method.topk={cfg.topk} must be >= 1")
    r, s, st = int(cfg.texture.resize), int(cfg.input_size), int(cfg.texture.stride)
    need(r >= s and st >= 1 and (r - s) % st == 0,
         f"method.texture.resize={r} must be tiled exactly by crops of method.input_size={s} "
         f"at method.texture.stride={st}")


@register_method("vae_energy")
class VAEEnergy:
    """VAE with iterative energy-based projection (Dehaene et al., ICLR 2020).

    Objects: the whole image resized to ``input_size``. Textures: training on random ``input_size`` crops of a
    ``texture.resize`` resize (with flips); scoring tiles the resized image into crops and stitches the maps.
    Maps are |x_0 - x_T| (or |x_0 - f(x_0)| with ``score: reconstruction``) averaged over channels, resized to
    the input resolution and Gaussian-smoothed. With ``score: projection`` the plain reconstruction maps of the
    same model are offered in ``extra_predictions["reconstruction"]``.
    """

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        _check_config(cfg)
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.in_channels = 1 if ctx.grayscale else 3
        self.texture = bool(ctx.is_texture)
        torch.manual_seed(ctx.seed)
        self.model = ConvVAE(self.in_channels, int(cfg.input_size), list(cfg.channels), int(cfg.z_dim)).to(self.device)
        self.fitted = False
        self.history: list[float] = []  # mean training loss per epoch
        self.timings: dict[str, float] = {}
        self.extra_predictions: dict[str, Prediction] = {}

    # ---- image handling -------------------------------------------------------------------------------------
    @property
    def _side(self) -> int:
        """Side of the model-space images: the crop source for textures, the model input for objects."""
        return int(self.cfg.texture.resize) if self.texture else int(self.cfg.input_size)

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """Loader images [B, 3, H, W] (ImageNet-normalised) -> [B, C, side, side] in [0, 1] on the device."""
        x = denormalize(images.to(self.device).float())  # [B, 3, H, W]
        if self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)  # [B, 1, H, W]
        side = self._side
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        return x

    def _decode_all(self, loader: DataLoader) -> torch.Tensor:
        """The whole (small) training set once, in model space: [N, C, side, side] float16 on CPU."""
        parts = [self.to_model_space(b["image"]).half().cpu()
                 for b in progress(loader, "vae_energy: decode", self.ctx.progress, unit="batch")]
        if not parts:
            raise ValueError("empty training loader")
        return torch.cat(parts)

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

    # ---- training -------------------------------------------------------------------------------------------
    def _train_state_path(self) -> Path:
        if self.ctx.work_dir is None:
            raise ConfigError("method.train.checkpoint_every / method.train.resume need a run work_dir "
                              "(run through adbench)")
        return Path(self.ctx.work_dir) / "vae_energy_train.pt"

    def fit(self, train_loader: DataLoader) -> None:
        """Train the VAE (reconstruction + KL, Adam) on the normal images, held in memory."""
        tc = self.cfg.train
        t0 = time.perf_counter()
        data = self._decode_all(train_loader)  # [N, C, side, side]
        t1 = time.perf_counter()
        n, bs = data.shape[0], int(tc.batch_size)
        opt = torch.optim.Adam(self.model.parameters(), lr=float(tc.lr))
        g = torch.Generator().manual_seed(self.ctx.seed)
        start = 0
        every = int(tc.get("checkpoint_every") or 0)
        if tc.get("resume", False) and self._train_state_path().is_file():
            state = torch_load(str(self._train_state_path()), self.device)
            self.model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            g.set_state(state["generator"].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
            start, self.history = int(state["epoch"]), [float(v) for v in state["history"]]
            log.info("vae_energy: resumed training at epoch %d from %s", start, self._train_state_path())
        beta = float(self.cfg.kl_weight)
        max_s = float(tc.max_minutes) * 60 if tc.get("max_minutes") else float("inf")
        epoch_s = 0.0
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
                total += loss.item() * len(idx)
                seen += len(idx)
            self.history.append(total / max(seen, 1))
            epoch_s = time.perf_counter() - te
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{self.history[-1]:.1f}")
            if every and (epoch + 1) % every == 0:
                self._save_train_state(opt, g, epoch + 1)
        self.model.eval()
        self.fitted = True
        t2 = time.perf_counter()
        self.timings.update(decode_s=t1 - t0, train_s=t2 - t1, epochs_done=float(len(self.history)))

    def _save_train_state(self, opt: torch.optim.Optimizer, g: torch.Generator, epoch: int) -> None:
        path = self._train_state_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": opt.state_dict(), "generator": g.get_state(),
                    "torch_rng": torch.get_rng_state(), "epoch": epoch, "history": self.history}, tmp)
        tmp.replace(path)

    # ---- scoring --------------------------------------------------------------------------------------------
    def _maps_model_space(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, C, side, side] -> (reconstruction map, projection map or None), each [B, 1, side, side]."""
        s = int(self.cfg.input_size)
        stride = int(self.cfg.texture.stride)
        crops = tile(x0, s, stride) if self.texture else x0  # [B*T, C, s, s]
        pc = self.cfg.projection
        steps = int(pc.steps) if self.cfg.score == "projection" else 0
        rec_maps, proj_maps = [], []
        chunk = int(pc.get("batch_size") or crops.shape[0])
        for i in range(0, crops.shape[0], chunk):
            c0 = crops[i : i + chunk]
            xt, rec = project(self.model, c0, steps=steps, alpha=float(pc.alpha), lam=float(pc.lam),
                              loss=str(pc.get("loss") or self.cfg.loss), kl_weight=float(pc.get("kl_weight") or 0))
            rec_maps.append((c0 - rec).abs().mean(dim=1, keepdim=True))  # [b, 1, s, s]
            proj_maps.append((c0 - xt).abs().mean(dim=1, keepdim=True))
        rec_map = torch.cat(rec_maps)
        proj_map = torch.cat(proj_maps) if steps > 0 else None
        if self.texture:
            rec_map = stitch(rec_map, x0.shape[-1], stride)
            proj_map = stitch(proj_map, x0.shape[-1], stride) if proj_map is not None else None
        return rec_map, proj_map

    def _postprocess(self, m: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Map [B, 1, side, side] -> (image scores [B], smoothed maps [B, H, W] at the input resolution)."""
        up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0].cpu().numpy()  # [B, H, W]
        sigma = float(self.cfg.smoothing_sigma)
        if sigma > 0:
            up = np.stack([ndimage.gaussian_filter(a, sigma=sigma) for a in up])
        flat = up.reshape(up.shape[0], -1)
        if self.cfg.image_score == "max":
            scores = flat.max(axis=1)
        else:
            k = min(int(self.cfg.topk), flat.shape[1])
            scores = np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)
        return scores.astype(np.float32), up.astype(np.float32)

    def predict(self, test_loader: DataLoader) -> Prediction:
        """Scores and maps of ``method.score``; with projection also the plain reconstruction in extra_predictions."""
        if not self.fitted:
            raise RuntimeError("VAEEnergy.predict called before fit or load")
        self.model.eval()
        out: dict[str, tuple[list, list]] = {"reconstruction": ([], []), "projection": ([], [])}
        t_model = t_post = 0.0
        for batch in progress(test_loader, "vae_energy: predict", self.ctx.progress, unit="batch"):
            images = batch["image"]  # [B, 3, H, W]
            size = tuple(images.shape[-2:])
            tm = time.perf_counter()
            rec_map, proj_map = self._maps_model_space(self.to_model_space(images))
            tp = time.perf_counter()
            for key, m in (("reconstruction", rec_map), ("projection", proj_map)):
                if m is not None:
                    s, a = self._postprocess(m, size)
                    out[key][0].append(s)
                    out[key][1].append(a)
            t_model += tp - tm
            t_post += time.perf_counter() - tp
        self.timings.update(predict_model_s=t_model, postprocess_s=t_post)
        preds = {k: Prediction(np.concatenate(s), np.concatenate(a)) for k, (s, a) in out.items() if s}
        main = preds.pop(str(self.cfg.score))
        self.extra_predictions = preds
        return main

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``vae_energy.pt``: config, channel/texture mode, VAE weights, training-loss history."""
        if not self.fitted:
            raise RuntimeError("VAEEnergy.save called before fit")
        save_method_state(Path(directory) / "vae_energy.pt", "vae_energy", CHECKPOINT_VERSION, self.cfg,
                          grayscale=self.in_channels == 1, is_texture=self.texture,
                          model=self.model.state_dict(), history=self.history)

    @classmethod
    def load(cls, directory: str | Path, ctx: RunContext) -> "VAEEnergy":
        """Restore a fitted model; channel count and texture mode come from the checkpoint."""
        state, cfg = load_method_state(Path(directory) / "vae_energy.pt", "vae_energy", CHECKPOINT_VERSION)
        ctx = dataclasses.replace(ctx, grayscale=bool(state["grayscale"]), is_texture=bool(state["is_texture"]))
        self = cls(cfg, ctx)
        self.model.load_state_dict(state["model"])
        self.model.eval()
        self.history = [float(v) for v in state["history"]]
        self.fitted = True
        return self
