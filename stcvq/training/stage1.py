"""Stage I training: the objective (L1 + perceptual + VQ/MPR + adversarial) and the entry point.

``train_stage1(cfg, data, out_dir, val_batches)`` trains with :func:`stcvq.training.loop.train` and
returns its result; the stage script exports ``result.final`` (the EMA weights) with
:func:`stcvq.training.loop.export_model`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from stcvq.config import check
from stcvq.nn.discriminator import BACKBONES, FeatureDiscriminator, build_discriminator, hinge_d_loss, hinge_g_loss
from stcvq.nn.losses import build_perceptual_loss
from stcvq.nn.quantize import codebook_stats
from stcvq.nn.runtime import autocast, unwrap
from stcvq.nn.vqgan import Stage1Config, Stage1Model
from stcvq.training.loop import (
    ClipSource,
    StepOutput,
    TrainConfig,
    TrainingHooks,
    TrainResult,
    average_gradients,
    train,
)
from stcvq.training.monitor import clip_grid, psnr_per_clip
from stcvq.training.provenance import reset_stale_run, run_fingerprint

log = logging.getLogger(__name__)


@dataclass
class Stage1LossConfig:
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    vgg19_weights: str | None = None  # local .pth/.safetensors; None: the torch.hub cache, else off
    discriminator: str | None = "dinov2-small"  # dinov2-small | dinov2-base | clip-b16 | hub id | folder; None: off
    disc_heads: int = 4
    disc_image_size: int | None = None  # None: the backbone's own (224)
    adversarial_weight: float = 0.1  # 0 turns the adversarial loss off
    disc_start: int = 0  # first step with the adversarial loss
    disc_lr: float = 7e-5
    allow_download: bool = False  # never fetch weights at run time unless asked

    def __post_init__(self) -> None:
        check(self.l1_weight >= 0 and self.perceptual_weight >= 0, "loss weights must be >= 0")
        check(self.adversarial_weight >= 0 and self.disc_start >= 0 and self.disc_lr > 0,
              "adversarial_weight >= 0, disc_start >= 0, disc_lr > 0")
        # A hub id or a path has a slash; a bare word must be a known short name, so a typo
        # fails here instead of silently training without the adversarial loss.
        name = self.discriminator
        check(not name or name in BACKBONES or "/" in name or Path(name).is_dir(),
              f"discriminator: {name!r} is not one of {sorted(BACKBONES)}, a hub id (org/name) or a folder; "
              "null turns it off")


@dataclass
class Stage1TrainConfig:
    model: Stage1Config = field(default_factory=Stage1Config)
    loss: Stage1LossConfig = field(default_factory=Stage1LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class AdversarialLoss:
    """The hinge adversarial term of the generator loss and the discriminator it trains.

    As taming-transformers' VQLPIPSWithDiscriminator, the loss owns the discriminator, its
    optimiser and its start step. Per optimiser step: :meth:`start` (the discriminator's heads get
    no gradient from the generator loss), :meth:`generator_term` for each micro-batch (it keeps
    the detached real and fake clips), and after the generator's update :meth:`update`, one
    discriminator step on those clips. The heads are outside DDP: their gradients are averaged
    over the processes by hand."""

    def __init__(self, discriminator: FeatureDiscriminator, weight: float, start_step: int, lr: float):
        self.discriminator, self.weight, self.start_step, self.lr = discriminator, weight, start_step, lr
        self.params = [p for p in discriminator.parameters() if p.requires_grad]
        self.active = False
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def setup(self, cfg: TrainConfig, device: torch.device) -> None:
        self.discriminator.to(device)
        self.optimizer = cfg.make_adamw(self.params, self.lr)
        self.device, self.precision, self.grad_accum = device, cfg.precision, cfg.grad_accum

    def start(self, step: int) -> None:
        self.active, self.pairs = step >= self.start_step, []
        self.discriminator.requires_grad_(False)

    def generator_term(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor | None:
        """The generator's hinge loss on ``fake`` (None before the start step)."""
        if not self.active:
            return None
        g_adv = hinge_g_loss(self.discriminator(fake))
        self.pairs.append((real.detach(), fake.detach()))
        return g_adv

    def update(self) -> dict[str, torch.Tensor]:
        """One discriminator step on this step's real and fake clips; its last micro-batch's loss."""
        for p in self.params:
            p.requires_grad_(True)
        if not self.active:
            return {}
        self.optimizer.zero_grad(set_to_none=True)
        for real, fake in self.pairs:
            with autocast(self.device, self.precision):
                d_loss = hinge_d_loss(self.discriminator(real), self.discriminator(fake))
            (d_loss / self.grad_accum).backward()
        average_gradients(self.params)
        self.optimizer.step()
        self.pairs = []
        return {"d_loss": d_loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        """The heads and their optimiser; the frozen backbone comes from the hub, not from the run."""
        heads = {k: v for k, v in self.discriminator.state_dict().items() if not k.startswith("backbone.")}
        return {"discriminator": heads, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "discriminator" not in state:
            raise RuntimeError("the checkpoint has no discriminator state")
        missing, unexpected = self.discriminator.load_state_dict(state["discriminator"], strict=False)
        if unexpected or any(not k.startswith("backbone.") for k in missing):
            raise RuntimeError(f"discriminator state does not match ({missing[:3]}, {unexpected[:3]})")
        self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def evaluate_stage1(model: Stage1Model, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
    """val_psnr (mean over clips) and codebook usage/perplexity over all val clips."""
    psnrs, spatial, temporal = [], [], []
    device = next(model.parameters()).device
    for batch in batches:
        real = batch["hq"].to(device)
        out = model(real)
        psnrs.append(psnr_per_clip(out.reconstruction.float(), real.float()).cpu())
        spatial.append(out.quantized.indices_spatial.flatten().cpu())
        temporal.append(out.quantized.indices_temporal.flatten().cpu())
    if not psnrs:
        raise ValueError("no validation clips")
    s = codebook_stats(torch.cat(spatial), model.config.num_codes_spatial)
    t = codebook_stats(torch.cat(temporal), model.config.num_codes_temporal)
    return {"val_psnr": float(torch.cat(psnrs).mean()), "codebook_usage_spatial": s["usage"],
            "codebook_usage_temporal": t["usage"], "perplexity_spatial": s["perplexity"],
            "perplexity_temporal": t["perplexity"]}


class Stage1Objective(TrainingHooks):
    """Loss of one micro-batch for :func:`stcvq.training.loop.train`, with the adversarial part when a
    discriminator is configured, its weights are found and ``adversarial_weight`` > 0."""

    def __init__(self, model: Stage1Model, loss_cfg: Stage1LossConfig, num_samples: int = 2):
        self.model = model
        self.cfg = loss_cfg
        self.num_samples = num_samples
        self.perceptual = build_perceptual_loss(loss_cfg.vgg19_weights) if loss_cfg.perceptual_weight > 0 else None
        self.discriminator = None
        if loss_cfg.discriminator and loss_cfg.adversarial_weight > 0:
            self.discriminator = build_discriminator(loss_cfg.discriminator, num_heads=loss_cfg.disc_heads,
                                                     image_size=loss_cfg.disc_image_size,
                                                     local_files_only=not loss_cfg.allow_download)
        self.adversarial = None
        if self.discriminator is not None:
            self.adversarial = AdversarialLoss(self.discriminator, loss_cfg.adversarial_weight, loss_cfg.disc_start,
                                               loss_cfg.disc_lr)
        elif loss_cfg.adversarial_weight > 0:
            log.warning("training without the adversarial loss (no discriminator)")

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        real = batch["hq"]
        out = model(real)
        recon = out.reconstruction
        q = out.quantized
        l1 = (recon - real).abs().mean()
        loss = self.cfg.l1_weight * l1 + q.loss
        logs: dict[str, Any] = {"l1": l1.detach(), **q.terms}
        if self.perceptual is not None:
            self.perceptual.to(real.device)
            perceptual = self.perceptual(recon, real)
            loss = loss + self.cfg.perceptual_weight * perceptual
            logs["perceptual"] = perceptual.detach()
        config = unwrap(model).config
        for name, idx, n in (("spatial", q.indices_spatial, config.num_codes_spatial),
                             ("temporal", q.indices_temporal, config.num_codes_temporal)):
            stats = codebook_stats(idx, n)
            logs[f"usage_{name}"] = stats["usage"]
            logs[f"perplexity_{name}"] = stats["perplexity"]
        g_adv = self.adversarial.generator_term(real, recon) if self.adversarial is not None else None
        if g_adv is not None:
            loss = loss + self.adversarial.weight * g_adv
            logs["g_adv"] = g_adv.detach()
        return StepOutput(loss, logs)

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        return evaluate_stage1(model, batches)

    @torch.no_grad()
    def samples(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        real = batch["hq"][: self.num_samples]
        recon = model(real).reconstruction
        rows = [r for pair in zip(real, recon) for r in pair]  # real, reconstruction, real, ...
        return {"reconstruction": clip_grid(rows)}

    # the adversarial loss's share of the loop
    def setup(self, cfg: TrainConfig, device: torch.device) -> None:
        if self.adversarial is not None:
            self.adversarial.setup(cfg, device)

    def before_step(self, step: int) -> None:
        if self.adversarial is not None:
            self.adversarial.start(step)

    def after_update(self, step: int) -> dict[str, torch.Tensor | float]:
        return self.adversarial.update() if self.adversarial is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return self.adversarial.state_dict() if self.adversarial is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adversarial is not None:
            self.adversarial.load_state_dict(state)


def train_stage1(
    cfg: Stage1TrainConfig,
    data: ClipSource,
    out_dir: str | Path,
    val_batches: Callable[[], Iterable[dict[str, Any]]] | None = None,
    **train_kwargs,
) -> TrainResult:
    """Train Stage I in ``out_dir`` (checkpoints, DVCLive); ``result.final`` is the model to export.

    A run folder left by another config, other data (``data.fingerprint()``) or other code (this
    module, the data sources of :mod:`stcvq.training.batches` and every ``stcvq`` module they
    import) is wiped first (:mod:`stcvq.training.provenance`), so neither an ablation nor new
    shards nor a code change resumes the previous run's checkpoints."""
    reset_stale_run(out_dir, run_fingerprint(cfg, [data], code=(__name__, "stcvq.training.batches")))
    torch.manual_seed(cfg.train.seed)  # same initial weights on every process
    model = Stage1Model(cfg.model)
    objective = Stage1Objective(model, cfg.loss, cfg.train.num_samples)
    return train(objective, data, cfg.train, out_dir, val_batches=val_batches, **train_kwargs)


__all__ = ["AdversarialLoss", "Stage1LossConfig", "Stage1Objective", "Stage1TrainConfig", "evaluate_stage1",
           "train_stage1"]
