"""CutPaste adapter: train the image and the 64x64 patch model, fit densities, score images and pixel maps."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from adbench.api import Prediction, RunContext
from adbench.data.errors import ConfigError
from adbench.registry import register_method
from adbench.utils import load_method_state, save_method_state, progress

from .augment import VARIANTS, AugmentConfig
from .density import DENSITIES, density_from_state, make_density
from .localise import extract_patches, grid_shape, patches_at, scores_to_map
from .model import CutPasteNet, build_encoder, freeze_before
from .train import TrainConfig, step_generator, train_cutpaste

log = logging.getLogger("adbench")
CHECKPOINT_VERSION = 1
_IMAGE, _PATCH = 0, 1  # seed salts of the two models


def _pair(v, name: str, cast=float) -> tuple:
    if v is None or len(v) != 2 or cast(v[0]) > cast(v[1]):
        raise ConfigError(f"method.augment.{name}={v} must be [low, high] with low <= high")
    return cast(v[0]), cast(v[1])


@register_method("cutpaste")
class CutPaste:
    """CutPaste (Li et al., CVPR 2021): self-supervised CutPaste / scar classifier, Gaussian density on its
    embeddings for image scores, and a 64x64 patch model scored densely for anomaly maps."""

    def __init__(self, cfg: DictConfig, ctx: RunContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        if cfg.variant not in VARIANTS:
            raise ConfigError(f"method.variant={cfg.variant!r}; choose one of {', '.join(VARIANTS)}")
        if cfg.density not in DENSITIES:
            raise ConfigError(f"method.density={cfg.density!r}; choose one of {', '.join(DENSITIES)}")
        if cfg.embedding not in ("pooled", "head"):
            raise ConfigError(f"method.embedding={cfg.embedding!r}; choose pooled or head")
        a = cfg.augment
        self.augment = AugmentConfig(
            image_jitter=float(a.image_jitter), patch_jitter=float(a.patch_jitter), translate=float(a.translate),
            area_ratio=_pair(a.area_ratio, "area_ratio"), aspect_ratio=_pair(a.aspect_ratio, "aspect_ratio"),
            scar_width=_pair(a.scar_width, "scar_width", int), scar_length=_pair(a.scar_length, "scar_length", int),
            scar_angle=_pair(a.scar_angle, "scar_angle"))
        p = cfg.patch
        if p.enabled and (int(p.size) < 8 or int(p.stride) < 1):
            raise ConfigError(f"method.patch.size={p.size} must be >= 8 and method.patch.stride={p.stride} >= 1")
        self.n_classes = 3 if cfg.variant == "3way" else 2
        self.image_net = self._build_net(_IMAGE)
        self.patch_net = self._build_net(_PATCH) if p.enabled else None
        self.image_density = None
        self.patch_density = None
        self.history: dict[str, list[dict]] = {}
        self.timings: dict[str, float] = {}

    @property
    def train_log(self) -> list[dict]:
        """Logged training steps of both models: ``{"stage": "image"|"patch", "step", "loss", "acc", "lr"}``."""
        return [{"stage": name, **entry} for name in ("image", "patch") for entry in self.history.get(name, [])]

    # ----------------------------------------------------------------- building blocks
    def _build_net(self, salt: int) -> CutPasteNet:
        bb = self.cfg.backbone
        encoder, dim = build_encoder(str(bb.name), bb.weights)
        torch.manual_seed(self.ctx.seed * 2 + salt)  # head initialisation
        net = CutPasteNet(encoder, dim, list(self.cfg.head_dims), self.n_classes).to(self.device).eval()
        if self.cfg.get("channels_last", False):
            net = net.to(memory_format=torch.channels_last)
        return net

    def _train_config(self, n_train: int, patch: bool) -> TrainConfig:
        t, p = self.cfg.train, self.cfg.patch
        batch = int(p.batch_size or t.batch_size) if patch else int(t.batch_size)
        per_epoch = t.get("steps_per_epoch")
        per_epoch = math.ceil(n_train / batch) if per_epoch is None else int(per_epoch)  # null: one pass
        steps = t.steps if t.steps is not None else int(t.epochs) * per_epoch
        if patch and p.steps is not None:
            steps = p.steps
        if int(steps) < 0 or batch < 1 or per_epoch < 1:
            raise ConfigError(f"method.train.steps/epochs must be >= 0, batch_size and steps_per_epoch >= 1 "
                              f"(got {steps}, {batch}, {per_epoch})")
        return TrainConfig(
            steps=int(steps), batch_size=batch, lr=float(t.lr), momentum=float(t.momentum),
            weight_decay=float(t.weight_decay), freeze_backbone_steps=int(t.freeze_backbone_steps),
            crop=int(p.size) if patch else None, variant=str(self.cfg.variant), augment=self.augment,
            checkpoint_every=int(t.checkpoint_every), log_every=int(t.log_every), resume=bool(t.resume),
            channels_last=bool(self.cfg.get("channels_last", False)))

    @torch.inference_mode()
    def _embed(self, net: CutPasteNet, x: torch.Tensor) -> torch.Tensor:
        """Images or patches [B, 3, h, w] (normalised) -> density embeddings [B, D] (float32, CPU)."""
        net.eval()
        out = []
        for chunk in x.split(int(self.cfg.embed_batch_size)):
            chunk = chunk.to(self.device)
            if self.cfg.get("channels_last", False):
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            out.append(net.embed(chunk, str(self.cfg.embedding)).float().cpu())
        emb = torch.cat(out)
        return F.normalize(emb, dim=1) if self.cfg.normalize_embeddings else emb

    def _train(self, net: CutPasteNet, images: torch.Tensor, salt: int, name: str) -> float:
        t0 = time.perf_counter()
        tcfg = self._train_config(images.shape[0], patch=salt == _PATCH)
        if tcfg.steps == 0:
            return 0.0
        frozen_bn = freeze_before(net.encoder, self.cfg.backbone.get("train_from"))
        ckpt = Path(self.ctx.work_dir) / f"train_{name}.pt" if self.ctx.work_dir else None
        fingerprint = json.dumps({"cfg": OmegaConf.to_container(self.cfg, resolve=True), "model": name,
                                  "seed": self.ctx.seed, "n_train": int(images.shape[0])}, sort_keys=True)
        self.history[name] = train_cutpaste(
            net, images, tcfg, seed=self.ctx.seed, salt=salt, device=self.device, frozen_bn=frozen_bn,
            checkpoint=ckpt, fingerprint=fingerprint, desc=f"cutpaste: train {name}", show_progress=self.ctx.progress)
        for p in net.parameters():
            p.requires_grad_(False)
        if ckpt is not None and not self.cfg.train.keep_checkpoints:
            ckpt.unlink(missing_ok=True)
        return time.perf_counter() - t0

    def _patch_fit_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``patch.fit_per_image`` random grid patches of every training image (all when null)."""
        p = self.cfg.patch
        size, stride = int(p.size), int(p.stride)
        gh, gw = grid_shape(images.shape[-2], images.shape[-1], size, stride)
        k = p.fit_per_image
        out = []
        for i in progress(range(images.shape[0]), "cutpaste: patch density", self.ctx.progress, unit="img"):
            if k is None or int(k) >= gh * gw:
                patches = extract_patches(images[i], size, stride)  # [L, 3, p, p]
            else:
                idx = torch.randperm(gh * gw, generator=step_generator(self.ctx.seed, _PATCH, i, stream=2))[: int(k)]
                patches = patches_at(images[i], size, stride, idx)  # [k, 3, p, p]
            out.append(self._embed(self.patch_net, patches))
        return torch.cat(out)

    # ----------------------------------------------------------------- the contract
    def fit(self, train_loader: DataLoader) -> None:
        """Decode the normal images once, train both models, fit the densities on their embeddings."""
        t0 = time.perf_counter()
        images = torch.cat([b["image"] for b in train_loader])  # [N, 3, H, W] normalised, CPU
        if images.shape[0] == 0:
            raise ValueError("empty training loader")
        t1 = time.perf_counter()
        self.timings.update(load_s=t1 - t0, train_s=self._train(self.image_net, images, _IMAGE, "image"))
        t2 = time.perf_counter()
        self.image_density = make_density(str(self.cfg.density), float(self.cfg.kde_bandwidth))
        self.image_density.fit(self._embed(self.image_net, images))
        self.timings["density_s"] = time.perf_counter() - t2
        if self.patch_net is not None:
            self.timings["patch_train_s"] = self._train(self.patch_net, images, _PATCH, "patch")
            t3 = time.perf_counter()
            self.patch_density = make_density(str(self.cfg.density), float(self.cfg.kde_bandwidth))
            self.patch_density.fit(self._patch_fit_embeddings(images))
            self.timings["patch_density_s"] = time.perf_counter() - t3

    def predict(self, test_loader: DataLoader) -> Prediction:
        """Image scores [N] from the image model; maps [N, H, W] from the patch model (constant without it)."""
        if self.image_density is None:
            raise RuntimeError("CutPaste.predict called before fit or load")
        p = self.cfg.patch
        scores, maps = [], []
        t_image = t_patch = 0.0
        for batch in progress(test_loader, "cutpaste: predict", self.ctx.progress, unit="batch"):
            x = batch["image"]  # [B, 3, H, W]
            t0 = time.perf_counter()
            s = self.image_density.score(self._embed(self.image_net, x)).numpy()  # [B]
            scores.append(s)
            t1 = time.perf_counter()
            t_image += t1 - t0
            if self.patch_net is None:
                maps.append(np.broadcast_to(s[:, None, None], (x.shape[0], *x.shape[-2:])).astype(np.float32))
                continue
            size, stride = int(p.size), int(p.stride)
            gh, gw = grid_shape(x.shape[-2], x.shape[-1], size, stride)
            grid = torch.stack([self.patch_density.score(self._embed(self.patch_net, extract_patches(img, size, stride)))
                                for img in x]).reshape(-1, gh, gw)  # [B, gh, gw]
            maps.append(scores_to_map(grid, tuple(x.shape[-2:]), size, stride, float(p.sigma)))
            t_patch += time.perf_counter() - t1
        self.timings.update(predict_image_s=t_image, predict_patch_s=t_patch)
        return Prediction(np.concatenate(scores), np.concatenate(maps))

    def save(self, directory: str | Path) -> None:
        """Write ``cutpaste.pt``: config, both networks and both fitted densities."""
        if self.image_density is None:
            raise RuntimeError("CutPaste.save called before fit")
        state = {"image_model": self.image_net.state_dict(), "image_density": self.image_density.state(),
                 "history": self.history}
        if self.patch_net is not None:
            state.update(patch_model=self.patch_net.state_dict(), patch_density=self.patch_density.state())
        save_method_state(Path(directory) / "cutpaste.pt", "cutpaste", CHECKPOINT_VERSION, self.cfg, **state)

    @classmethod
    def load(cls, directory: str | Path, ctx: RunContext) -> "CutPaste":
        """Restore a fitted model (no weights download: the networks are in the file)."""
        state, cfg = load_method_state(Path(directory) / "cutpaste.pt", "cutpaste", CHECKPOINT_VERSION)
        cfg.backbone.weights = "none"
        self = cls(cfg, ctx)
        self.image_net.load_state_dict(state["image_model"])
        self.image_density = density_from_state(str(cfg.density), state["image_density"])
        self.history = dict(state.get("history", {}))
        if self.patch_net is not None:
            self.patch_net.load_state_dict(state["patch_model"])
            self.patch_density = density_from_state(str(cfg.density), state["patch_density"])
        return self
