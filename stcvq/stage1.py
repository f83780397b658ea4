"""Stage I training: the objective (L1 + perceptual + VQ/MPR + adversarial) and the entry point.

``train_stage1(cfg, data, out_dir, val_batches)`` trains with :func:`stcvq.train.train` and
writes the EMA model (the trained model when EMA is off) with ``save_pretrained`` to
``out_dir/model``, plus the final evaluation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .config import check, to_dict
from .nn.discriminator import BACKBONES, build_discriminator
from .nn.losses import build_perceptual_loss
from .nn.quantize import codebook_stats
from .nn.vqgan import Stage1Config, Stage1Model
from .train import ClipSource, StepOutput, TrainConfig, TrainResult, code_fingerprint, reset_stale_run, train

log = logging.getLogger(__name__)


@dataclass
class Stage1LossConfig:
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    vgg19_weights: str | None = None  # local .pth/.safetensors; None: the torch.hub cache, else off
    discriminator: str | None = "dinov2-small"  # dinov2-small | dinov2-base | clip-b16 | hub id | folder; None: off
    disc_heads: int = 4
    disc_image_size: int | None = None  # None: the backbone's own (224)
    allow_download: bool = False  # never fetch weights at run time unless asked

    def __post_init__(self) -> None:
        check(self.l1_weight >= 0 and self.perceptual_weight >= 0, "loss weights must be >= 0")
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


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-clip PSNR (dB) of (B, C, T, H, W) clips in [0, 1]; output is clamped first."""
    mse = (output.clamp(0, 1) - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def clip_grid(rows: list[torch.Tensor], max_frames: int = 8) -> np.ndarray:
    """Rows of (3, T, H, W) clips -> one HWC uint8 image, frames left to right."""
    lines = []
    for clip in rows:
        frames = clip[:, :max_frames].clamp(0, 1)
        lines.append(torch.cat(list(frames.permute(1, 0, 2, 3)), dim=2))  # (3, H, T*W)
    grid = torch.cat(lines, dim=1)
    return (grid.permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).astype(np.uint8)


class Stage1Objective:
    """Loss of one micro-batch for :func:`stcvq.train.train`."""

    def __init__(self, model: Stage1Model, loss_cfg: Stage1LossConfig, num_samples: int = 2):
        self.model = model
        self.cfg = loss_cfg
        self.num_samples = num_samples
        self.perceptual = build_perceptual_loss(loss_cfg.vgg19_weights) if loss_cfg.perceptual_weight > 0 else None
        self.discriminator = None
        if loss_cfg.discriminator:
            self.discriminator = build_discriminator(loss_cfg.discriminator, num_heads=loss_cfg.disc_heads,
                                                     image_size=loss_cfg.disc_image_size,
                                                     local_files_only=not loss_cfg.allow_download)

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
        inner = model.module if hasattr(model, "module") else model
        for name, idx, n in (("spatial", q.indices_spatial, inner.config.num_codes_spatial),
                             ("temporal", q.indices_temporal, inner.config.num_codes_temporal)):
            stats = codebook_stats(idx, n)
            logs[f"usage_{name}"] = stats["usage"]
            logs[f"perplexity_{name}"] = stats["perplexity"]
        return StepOutput(loss, logs, real, recon)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """val_psnr (mean over clips) and codebook usage/perplexity over all val clips."""
        psnrs, spatial, temporal = [], [], []
        device = next(model.parameters()).device
        for batch in batches:
            real = batch["hq"].to(device)
            out = model(real)
            psnrs.append(psnr(out.reconstruction.float(), real.float()).cpu())
            spatial.append(out.quantized.indices_spatial.flatten().cpu())
            temporal.append(out.quantized.indices_temporal.flatten().cpu())
        if not psnrs:
            raise ValueError("no validation clips")
        s = codebook_stats(torch.cat(spatial), model.config.num_codes_spatial)
        t = codebook_stats(torch.cat(temporal), model.config.num_codes_temporal)
        return {"val_psnr": float(torch.cat(psnrs).mean()), "codebook_usage_spatial": s["usage"],
                "codebook_usage_temporal": t["usage"], "perplexity_spatial": s["perplexity"],
                "perplexity_temporal": t["perplexity"]}

    @torch.no_grad()
    def samples(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        real = batch["hq"][: self.num_samples]
        recon = model(real).reconstruction
        rows = [r for pair in zip(real, recon) for r in pair]  # real, reconstruction, real, ...
        return {"reconstruction": clip_grid(rows)}


def train_stage1(
    cfg: Stage1TrainConfig,
    data: ClipSource,
    out_dir: str | Path,
    val_batches: Callable[[], Iterable[dict[str, Any]]] | None = None,
    data_fingerprint: str | None = None,
    **train_kwargs,
) -> TrainResult:
    """Train Stage I; the exported model (EMA weights) lands in ``out_dir/model``.

    A run folder left by another config, ``data_fingerprint`` or code (this module, the shard
    loader :mod:`stcvq.data` and every ``stcvq`` module they import) is wiped first, so neither an
    ablation nor a code change resumes the previous run's checkpoints."""
    reset_stale_run(out_dir, {"config": to_dict(cfg), "data": data_fingerprint,
                              "code": code_fingerprint(__name__, "stcvq.data")})
    torch.manual_seed(cfg.train.seed)  # same initial weights on every process
    model = Stage1Model(cfg.model)
    objective = Stage1Objective(model, cfg.loss, cfg.train.num_samples)
    if objective.discriminator is None and cfg.train.adversarial_weight > 0:
        log.warning("training without the adversarial loss (no discriminator)")
    result = train(objective, data, cfg.train, out_dir, val_batches=val_batches, **train_kwargs)
    final = result.ema_model if result.ema_model is not None else result.model
    if int(os.environ.get("RANK", "0")) == 0:
        final.save_pretrained(Path(out_dir) / "model")
    return result


__all__ = ["Stage1LossConfig", "Stage1Objective", "Stage1TrainConfig", "clip_grid", "psnr", "train_stage1"]
