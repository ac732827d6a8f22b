"""The self-supervised CutPaste training loop: SGD + cosine decay, checkpoints every few steps, exact resume.

A step's batch indices and augmentations depend only on (seed, step), and the checkpoint stores the global
torch RNG state (dropout), so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from adbench.data import denormalize, normalize
from adbench.data.errors import ConfigError
from adbench.utils import progress, torch_load, torch_save_atomic

from .augment import AugmentConfig, make_views
from .model import CutPasteNet, set_train_mode

log = logging.getLogger("adbench")
TRAIN_CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    """Schedule and bookkeeping of one training run (the image model or the patch model)."""

    steps: int
    batch_size: int = 32
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 3e-5
    freeze_backbone_steps: int = 0  # first steps train head + classifier only (encoder frozen, eval mode)
    crop: int | None = None  # random crop of this side before augmenting (the 64 x 64 patch model)
    variant: str = "3way"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    checkpoint_every: int = 50
    log_every: int = 10
    resume: bool = True
    channels_last: bool = False


def step_generator(seed: int, salt: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, salt, stream, step): stream 0 augments, stream 1 shuffles."""
    state = np.random.SeedSequence([seed, salt, stream, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def batch_indices(step: int, n: int, batch_size: int, seed: int, salt: int) -> torch.Tensor:
    """Indices [batch_size] of ``step``: consecutive slices of per-epoch permutations of range(n)."""
    perms: dict[int, torch.Tensor] = {}
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=step_generator(seed, salt, epoch, stream=1))
        out.append(int(perms[epoch][offset]))
    return torch.tensor(out)


def random_crops(x: torch.Tensor, side: int, gen: torch.Generator) -> torch.Tensor:
    """One random ``side`` x ``side`` crop of each image of ``x`` [B, 3, H, W] -> [B, 3, side, side]."""
    _, _, h, w = x.shape
    if side > h or side > w:
        raise ConfigError(f"method.patch.size={side} is larger than the {h}x{w} images")
    ys = torch.randint(0, h - side + 1, (x.shape[0],), generator=gen).tolist()
    xs = torch.randint(0, w - side + 1, (x.shape[0],), generator=gen).tolist()
    return torch.stack([x[i, :, y : y + side, c : c + side] for i, (y, c) in enumerate(zip(ys, xs))])


def train_cutpaste(model: CutPasteNet, images: torch.Tensor, cfg: TrainConfig, *, seed: int, salt: int,
                   device: torch.device, frozen_bn: list[str], checkpoint: Path | None = None,
                   fingerprint: str = "", desc: str = "cutpaste: train", show_progress: bool = True,
                   on_step: Callable[[int], None] | None = None) -> list[dict]:
    """Train ``model`` in place on normal ``images`` [N, 3, H, W] (ImageNet-normalised, CPU) to tell the
    original from its CutPaste / scar views. Returns the logged history ``[{step, loss, acc, lr}]``.

    With ``checkpoint`` set, the state is written there every ``cfg.checkpoint_every`` steps and at the end;
    an existing checkpoint with the same ``fingerprint`` is resumed when ``cfg.resume``. ``on_step(steps_done)``
    is called after every step (e.g. for evaluation during development).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1))
    start, history = 0, []
    if checkpoint is not None and cfg.resume and checkpoint.is_file():
        state = torch_load(str(checkpoint))
        if state.get("method") != "cutpaste-train" or state.get("version") != TRAIN_CHECKPOINT_VERSION:
            raise ConfigError(f"{checkpoint} is not a CutPaste training checkpoint of version "
                              f"{TRAIN_CHECKPOINT_VERSION}; delete it or set method.train.resume=false")
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(f"{checkpoint} was written with another config or training set; delete it or "
                              f"set method.train.resume=false")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, history = int(state["step"]), list(state["history"])
        log.info("%s: resumed from %s at step %d/%d", desc, checkpoint, start, cfg.steps)

    def save(step: int) -> None:
        if checkpoint is not None:
            torch_save_atomic({"method": "cutpaste-train", "version": TRAIN_CHECKPOINT_VERSION, "fingerprint": fingerprint,
                          "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "history": history},
                         checkpoint)

    n = images.shape[0]
    bar = progress(range(start, cfg.steps), desc, show_progress, total=cfg.steps - start, unit="step")
    for step in bar:
        gen = step_generator(seed, salt, step)
        x = images[batch_indices(step, n, cfg.batch_size, seed, salt)].to(device)  # [B, 3, H, W]
        x = denormalize(x)  # augment in [0, 1]
        if cfg.crop:
            x = random_crops(x, cfg.crop, gen)  # [B, 3, p, p]
        views, labels = make_views(x, cfg.variant, cfg.augment, gen)  # [K*B, 3, h, w], [K*B]
        views = normalize(views)
        if cfg.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)

        head_only = step < cfg.freeze_backbone_steps
        set_train_mode(model, frozen_bn, encoder_frozen=head_only)
        with torch.set_grad_enabled(not head_only):
            feats = model.encoder(views)  # [K*B, D]
        logits = model.classifier(model.head(feats))  # [K*B, K]
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

        acc = (logits.argmax(dim=1) == labels).float().mean().item()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": loss.item(), "acc": acc, "lr": opt.param_groups[0]["lr"]})
            log.info("%s: step %d/%d loss %.4f acc %.3f", desc, step + 1, cfg.steps, loss.item(), acc)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save(step + 1)
        if on_step is not None:
            on_step(step + 1)
    save(cfg.steps)
    model.eval()
    return history
