"""Stage II: an LQ encoder and two code lookup transformers on the frozen Stage I model.

Model (DESIGN.md section 1, Stage II)::

    lq clip -> E_l (trainable, starts as a copy of E_h) -> z_l (B, D, t, h, w)
      T_S(z_l)                         -> spatial logits  -> argmax i_S
      T_T(TA(z_l) + Residual_t(z_l))   -> temporal logits -> argmax i_T
      C_S[i_S] + C_T[i_T] -> D_h -> restored clip

C_S, C_T, TA, the fusion and D_h are Stage I's, frozen (``requires_grad_(False)``; gradients
still flow *through* the frozen TA into E_l). The motion residual is taken along the time axis
(dim 2), which the reference code got wrong.

Objective: ``lambda_ce (CE_S + CE_T) + code_weight ||z_l - sg(z_q)||^2`` with the target indices
and z_q from the frozen Stage I model on the HQ clip.

``save_pretrained`` writes a self-contained folder (every weight inference needs, Stage I parts
included; the HQ encoder is not needed for inference and is not stored) that
``Stage2Model.from_pretrained`` loads; ``Stage2Model(config)`` is a randomly initialised model
(what ``stcvq bench enhance`` measures). The model is a :class:`stcvq.enhance.ClipRestorer`.

Resolution. The transformers' position tables are sized for the latent grid of the training
clips (``Stage2Config.latent_grid``); another input size is a ValueError unless the model is
loaded with ``interpolate_positions=True``, which resizes the spatial tables bicubically.
Measured cost (``python benchmarks/bench_stage2_positions.py deflicker 64 48 96 32 128``,
embedded default trained at 64^2, frame layout, val clips resized; targets from Stage I at the
same size): index accuracy spatial/temporal 0.691/0.596 at 64; 0.705/0.638 at 48 and
0.669/0.551 at 96 (x0.75, x1.5: within about 5 points); 0.616/0.541 at 32 and 0.634/0.514 at
128 (x0.5, x2: 6-8 points lower). Output PSNR stays within 0.1 dB of Stage I's own
reconstruction at 48-128 but 0.6 dB below it at 32. Resize inputs to the trained size where
possible (``stcvq enhance`` does); interpolate for moderate changes only.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import check, from_dict, to_dict
from .tasks import TASKS
from .nn.export import load_model_weights, read_model_config, save_model_folder
from .nn.lookup import LookupConfig, LookupTransformer
from .nn.temporal import reference_stage2_residual, temporal_residual
from .nn.vqgan import Stage1Config, Stage1Model
from .monitor import clip_grid, psnr_per_clip as psnr
from .train import ClipSource, StepOutput, TrainConfig, TrainResult, code_fingerprint, reset_stale_run, train

log = logging.getLogger(__name__)

MODEL_TYPE = "stcvq-stage2"


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class Stage2Config:
    task: str = "bfvr"
    stage1: Stage1Config = field(default_factory=Stage1Config)
    spatial: LookupConfig = field(default_factory=LookupConfig)  # T_S
    temporal: LookupConfig = field(default_factory=LookupConfig)  # T_T
    clip_length: int = 24  # frames of the clips it was trained on (T_T / clip layout see t = ceil(T / 2))
    size: int = 512  # side of the square clips it was trained on
    lambda_ce: float = 1.0  # paper: 1.0 BFVR, 0.5 de-flicker
    code_weight: float = 10.0  # weight of ||z_l - sg(z_q)||^2 (10 in the reference code)
    residual_window: int | None = None  # motion residual window of T_T's input; None = Stage I's
    # time: T_T's input has the residual along time. reference: the published Stage II's
    # residual over memory rows (see temporal.reference_stage2_residual), which its weights
    # were trained with; only for the imported checkpoints.
    motion_residual: Literal["time", "reference"] = "time"

    def __post_init__(self) -> None:
        check(self.task in TASKS, f"task must be one of {list(TASKS)}, got {self.task!r}")
        check(self.clip_length >= 1 and self.size >= 1, "clip_length and size must be >= 1")
        check(self.size % self.stage1.spatial_factor == 0,
              f"size {self.size} must be a multiple of Stage I's spatial factor {self.stage1.spatial_factor}")
        check(self.lambda_ce >= 0 and self.code_weight >= 0, "loss weights must be >= 0")
        check(self.residual_window is None or self.residual_window >= 1, "residual_window must be >= 1")
        check(self.motion_residual in ("time", "reference"),
              f"motion_residual must be time or reference, got {self.motion_residual!r}")
        for name, lookup, codes in (("spatial", self.spatial, self.stage1.num_codes_spatial),
                                    ("temporal", self.temporal, self.stage1.num_codes_temporal)):
            check(lookup.codebook_size == codes, f"{name} transformer predicts {lookup.codebook_size} codes, Stage I has {codes}")
            check(lookup.latent_dim == self.stage1.latent_dim,
                  f"{name} transformer reads {lookup.latent_dim} channels, Stage I latents have {self.stage1.latent_dim}")
            check(tuple(lookup.grid) == self.latent_grid,
                  f"{name} transformer's position grid {tuple(lookup.grid)} != latent grid {self.latent_grid} "
                  f"of {self.clip_length} x {self.size}^2 clips (build configs with Stage2Config.build)")

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        """(t, h, w) of the latent of a clip_length x size^2 clip: the position tables' size."""
        s = self.stage1
        return (math.ceil(self.clip_length / s.temporal_factor), self.size // s.spatial_factor, self.size // s.spatial_factor)

    @property
    def window(self) -> int:
        return self.residual_window or self.stage1.residual_window

    @classmethod
    def build(
        cls,
        stage1: Stage1Config,
        task: str = "bfvr",
        *,
        clip_length: int,
        size: int,
        width: int = 256,
        ffn: int = 512,
        layers: int | None = None,
        heads: int | None = None,
        token_layout: str = "frame",
        interpolate_positions: bool = False,
        dropout: float = 0.0,
        lambda_ce: float | None = None,
        code_weight: float = 10.0,
        residual_window: int | None = None,
    ) -> "Stage2Config":
        """A config whose transformers fit ``stage1`` and the latent grid of clip_length x size^2
        clips. Depth defaults are the paper's per task (BFVR 9 x 2 heads, de-flicker 6 x 4),
        lambda_ce the paper's (1.0 BFVR, 0.5 de-flicker)."""
        bfvr = task == "bfvr"
        layers = layers if layers is not None else (9 if bfvr else 6)
        heads = heads if heads is not None else (2 if bfvr else 4)
        lambda_ce = lambda_ce if lambda_ce is not None else (1.0 if bfvr else 0.5)
        t = math.ceil(clip_length / stage1.temporal_factor)
        grid = (t, size // stage1.spatial_factor, size // stage1.spatial_factor)

        def lookup(codes: int) -> LookupConfig:
            return LookupConfig(codebook_size=codes, latent_dim=stage1.latent_dim, width=width, layers=layers,
                                heads=heads, ffn=ffn, dropout=dropout, token_layout=token_layout, grid=grid,
                                interpolate_positions=interpolate_positions)

        return cls(task=task, stage1=stage1, spatial=lookup(stage1.num_codes_spatial),
                   temporal=lookup(stage1.num_codes_temporal), clip_length=clip_length, size=size,
                   lambda_ce=lambda_ce, code_weight=code_weight, residual_window=residual_window)

    @classmethod
    def paper(cls, task: str = "bfvr", **overrides) -> "Stage2Config":
        """The paper's profile: Stage I paper model, 24 x 512^2 clips, width 256, FFN 512."""
        stage1 = overrides.pop("stage1", None) or Stage1Config.paper()
        return cls.build(stage1, task, **{"clip_length": 24, "size": 512, **overrides})

    @classmethod
    def tiny(cls, task: str = "bfvr", **overrides) -> "Stage2Config":
        """A CPU-test-sized model on ``Stage1Config.tiny()``: 4 x 16^2 clips -> latent (2, 4, 4)."""
        stage1 = overrides.pop("stage1", None) or Stage1Config.tiny()
        base = dict(clip_length=4, size=16, width=16, ffn=32, layers=1, heads=2)
        return cls.build(stage1, task, **{**base, **overrides})

    def with_interpolated_positions(self, enabled: bool = True) -> "Stage2Config":
        return dataclasses.replace(
            self, spatial=dataclasses.replace(self.spatial, interpolate_positions=enabled),
            temporal=dataclasses.replace(self.temporal, interpolate_positions=enabled))


@dataclass
class Stage2Arch:
    """The Stage II choices a params file sets (the rest comes from Stage I and the clips);
    ``Stage2Config.build(stage1, task, clip_length=..., size=..., **to_dict(arch))``.
    None: the paper's value for the task."""

    width: int = 256
    ffn: int = 512
    layers: int | None = None
    heads: int | None = None
    token_layout: Literal["frame", "clip"] = "frame"
    interpolate_positions: bool = False
    dropout: float = 0.0
    lambda_ce: float | None = None
    code_weight: float = 10.0
    residual_window: int | None = None


# The Stage I model of the embedded default pipeline (params.yaml stage1 section); the Stage II
# embedded default is built on it when no trained Stage I config is given.
EMBEDDED_STAGE1 = Stage1Config.tiny()
# Transformer sizes of the embedded default: trains in minutes on 2 CPU cores at 8 x 64^2.
EMBEDDED_LOOKUP = {
    "bfvr": dict(width=64, ffn=128, layers=2, heads=2),
    "deflicker": dict(width=64, ffn=128, layers=2, heads=4),
    "deflicker-pixel": dict(width=64, ffn=128, layers=2, heads=4),
}


def default_config(task: str = "bfvr", stage1: Stage1Config | None = None, **overrides) -> Stage2Config:
    """The embedded-default Stage II config of ``task`` (8 x 64^2 clips)."""
    check(task in TASKS, f"task must be one of {list(TASKS)}, got {task!r}")
    kwargs = {"clip_length": 8, "size": 64, **EMBEDDED_LOOKUP[task], **overrides}
    return Stage2Config.build(stage1 or EMBEDDED_STAGE1, task, **kwargs)


def bench_config(profile: str, task: str = "bfvr", *, size: int | None = None, attention: str | None = None,
                 token_layout: str | None = None, frames: int | None = None) -> Stage2Config:
    """The config ``stcvq bench enhance --profile paper|default`` builds with random weights."""
    check(profile in ("paper", "default"), f"profile must be paper or default, got {profile!r}")
    base = Stage2Config.paper(task) if profile == "paper" else default_config(task)
    stage1 = base.stage1 if attention is None else dataclasses.replace(base.stage1, attn_layout=attention)
    kwargs: dict[str, Any] = {"clip_length": frames or base.clip_length, "size": size or base.size,
                              "token_layout": token_layout or base.spatial.token_layout}
    if profile == "paper":
        return Stage2Config.paper(task, stage1=stage1, **kwargs)
    return default_config(task, stage1=stage1, **kwargs)


# ---------------------------------------------------------------------------------------------
# Model


@dataclass
class Stage2Output:
    latent: torch.Tensor  # z_l (B, D, t, h, w), the LQ encoder's output
    logits_spatial: torch.Tensor  # (B, N_S, t, h, w)
    logits_temporal: torch.Tensor  # (B, N_T, t, h, w)


class Stage2Model(nn.Module):
    """E_l + T_S + T_T on the frozen Stage I codebooks, TA, fusion and decoder.

    ``self.vqgan`` is a :class:`Stage1Model` whose *encoder is the LQ encoder* (trainable); its
    other parts are Stage I's, frozen. Reusing the Stage I module keeps encode (with padding to
    the compression factors), lookup, fusion and decode in one place."""

    def __init__(self, config: Stage2Config):
        super().__init__()
        self.config = config
        self.vqgan = Stage1Model(config.stage1)
        self.spatial_transformer = LookupTransformer(config.spatial)
        self.temporal_transformer = LookupTransformer(config.temporal)
        self.freeze_stage1()

    # ClipRestorer contract
    @property
    def clip_length(self) -> int:
        return self.config.clip_length

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def lq_encoder(self) -> nn.Module:
        return self.vqgan.encoder

    def freeze_stage1(self) -> "Stage2Model":
        """Freeze C_S, C_T, TA, fusion and decoder; the LQ encoder and transformers train."""
        self.vqgan.requires_grad_(False)
        self.vqgan.encoder.requires_grad_(True)
        return self

    @classmethod
    def from_stage1(cls, stage1: Stage1Model, config: Stage2Config) -> "Stage2Model":
        """A fresh Stage II model on a trained Stage I model; E_l starts as a copy of E_h."""
        if to_dict(stage1.config) != to_dict(config.stage1):
            raise ValueError("the Stage II config's stage1 section differs from the given Stage I model's config")
        model = cls(config)
        model.vqgan.load_state_dict(stage1.state_dict())
        return model.freeze_stage1()

    def _check_size(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected clips (B, 3, T, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size) and not self.config.spatial.interpolate_positions:
            raise ValueError(
                f"this Stage II model was trained on {self.size}x{self.size} clips, got {h}x{w}: resize the input "
                "to the model's size (stcvq enhance does), or load with interpolate_positions=True "
                "(resizes the learned position tables; costs accuracy, see the stage2 module docs)")

    def temporal_input(self, z: torch.Tensor) -> torch.Tensor:
        """T_T's input TA(z) + Residual(z), the residual along time: z[:, :, t] - z[:, :, t - window]
        (``motion_residual="reference"``: the published checkpoints' residual instead)."""
        if self.config.motion_residual == "reference":
            return self.vqgan.temporal.attention(z) + reference_stage2_residual(z)
        return self.vqgan.temporal.attention(z) + temporal_residual(z, self.config.window)

    def forward(self, lq: torch.Tensor) -> Stage2Output:
        self._check_size(lq)
        z = self.vqgan.encode(lq)
        return Stage2Output(z, self.spatial_transformer(z), self.temporal_transformer(self.temporal_input(z)))

    @torch.no_grad()
    def predict_indices(self, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self(lq)
        return out.logits_spatial.argmax(1), out.logits_temporal.argmax(1)

    @torch.no_grad()
    def restore(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, size, size) in [0, 1], any T >= 1 (clip layout: T <= clip_length) -> same
        shape, clamped to [0, 1] (never min-max renormalised)."""
        indices_spatial, indices_temporal = self.predict_indices(clips)
        z_q = self.vqgan.lookup(indices_spatial, indices_temporal)
        return self.vqgan.decode(z_q, tuple(clips.shape[-3:])).clamp(0, 1)

    # -- export -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, provenance: dict | None = None) -> None:
        """``model.safetensors`` (every weight inference needs) + ``config.json``, atomically."""
        save_model_folder(directory, self, MODEL_TYPE, to_dict(self.config), provenance)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu",
                        interpolate_positions: bool | None = None) -> "Stage2Model":
        """Load a folder written by ``save_pretrained``; ``interpolate_positions`` overrides the
        stored setting (True: accept other resolutions by resizing the position tables)."""
        raw, config_path = read_model_config(directory, MODEL_TYPE)
        config = from_dict(Stage2Config, raw, where=str(config_path))
        if interpolate_positions is not None:
            config = config.with_interpolated_positions(interpolate_positions)
        model = cls(config)
        load_model_weights(directory, model, map_location)
        return model.eval()


# ---------------------------------------------------------------------------------------------
# Objective and training


@dataclass
class Stage2TrainConfig:
    model: Stage2Config = field(default_factory=default_config)
    train: TrainConfig = field(default_factory=TrainConfig)
    # incremental (paper Table 7): `noisefree_steps` on the noise-free degradation, then
    # `train.steps` on the full one; holistic: noisefree_steps + train.steps on the full one.
    schedule: Literal["incremental", "holistic"] = "incremental"
    noisefree_steps: int = 0

    def __post_init__(self) -> None:
        check(self.schedule in ("incremental", "holistic"), f"schedule must be incremental or holistic, got {self.schedule!r}")
        check(self.noisefree_steps >= 0, "noisefree_steps must be >= 0")

    def phases(self, has_noisefree: bool) -> list[tuple[str, str, int]]:
        """[(phase name, LQ member, steps)]; tasks without a noise-free variant train in one phase."""
        if self.schedule == "incremental" and has_noisefree and self.noisefree_steps > 0:
            return [("noisefree", "lq_noisefree", self.noisefree_steps), ("full", "lq", self.train.steps)]
        return [("full", "lq", self.noisefree_steps + self.train.steps)]


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == target).float().mean()


def _brightness_error(clips: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per frame |mean(clip) - mean(reference)| on the 0..255 scale, (B*T,): what brightness
    flicker changes, and what PSNR mixes with every other difference."""
    return ((clips.float().mean(dim=(1, 3, 4)) - reference.float().mean(dim=(1, 3, 4))).abs() * 255).flatten().cpu()


def _degraded_frames(meta: Any, batch_size: int) -> list[list[int]]:
    """Per clip, the frame indices the synthesis degraded (de-flicker shards record them)."""
    if not isinstance(meta, list) or len(meta) != batch_size:
        return []
    out = []
    for m in meta:
        d = (m or {}).get("degradation") or {}
        out.append([int(f) for f in d.get("flicker_frames", d.get("rerendered_frames", []))])
    return out


class Stage2Objective:
    """Loss of one micro-batch for :func:`stcvq.train.train`.

    Targets are computed on the fly by the frozen Stage I model on the HQ clip rather than
    cached: the step already runs the LQ encoder forward and backward, and one no-grad forward
    of the HQ encoder of the same size costs about a third of that; a cache would have to be
    keyed to the Stage I weights and to every shard sample (and rebuilt whenever either
    changes), and would break the "same source, any DDP/resume layout" property the loop has."""

    discriminator = None

    def __init__(self, model: Stage2Model, target: Stage1Model, num_samples: int = 2):
        self.model = model
        self.target = copy.deepcopy(target).eval().requires_grad_(False)
        self.num_samples = num_samples

    @torch.no_grad()
    def targets(self, hq: torch.Tensor):
        self.target.to(hq.device)
        return self.target.quantize(self.target.encode(hq))

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        inner = model.module if hasattr(model, "module") else model
        cfg: Stage2Config = inner.config
        q = self.targets(batch["hq"])
        out = model(batch["lq"])
        ce_spatial = F.cross_entropy(out.logits_spatial.float(), q.indices_spatial)
        ce_temporal = F.cross_entropy(out.logits_temporal.float(), q.indices_temporal)
        code = F.mse_loss(out.latent.float(), q.z_q.detach().float())
        loss = cfg.lambda_ce * (ce_spatial + ce_temporal) + cfg.code_weight * code
        logs = {"ce_spatial": ce_spatial.detach(), "ce_temporal": ce_temporal.detach(), "code_loss": code.detach(),
                "acc_spatial": _accuracy(out.logits_spatial.detach(), q.indices_spatial),
                "acc_temporal": _accuracy(out.logits_temporal.detach(), q.indices_temporal)}
        return StepOutput(loss, logs)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Index accuracy of both predictors against the Stage I targets of the HQ clips, chance
        levels (uniform 1/N and the majority code's share), PSNR to HQ of the LQ input, of the
        Stage II output, and of Stage I's own reconstruction of HQ (the ceiling: the output is
        decoded by the same frozen decoder), per-frame brightness error (0..255) of input and
        output, and for de-flicker shards the PSNRs on the degraded frames only."""
        model = model.module if hasattr(model, "module") else model
        device = next(model.parameters()).device
        hits = {"spatial": 0.0, "temporal": 0.0}
        targets: dict[str, list[torch.Tensor]] = {"spatial": [], "temporal": []}
        psnr_in, psnr_out, psnr_ceiling = [], [], []
        degraded: dict[str, list[torch.Tensor]] = {"input": [], "output": []}  # flickered / re-rendered frames
        brightness: dict[str, list[torch.Tensor]] = {"input": [], "output": []}
        for batch in batches:
            hq, lq = batch["hq"].to(device), batch["lq"].to(device)
            q = self.targets(hq)
            pred_s, pred_t = model.predict_indices(lq)
            for name, pred, tgt in (("spatial", pred_s, q.indices_spatial), ("temporal", pred_t, q.indices_temporal)):
                hits[name] += float((pred == tgt).sum())
                targets[name].append(tgt.flatten().cpu())
            out = model.vqgan.decode(model.vqgan.lookup(pred_s, pred_t), tuple(hq.shape[-3:])).clamp(0, 1)
            psnr_out.append(psnr(out.float(), hq.float()).cpu())
            psnr_in.append(psnr(lq.float(), hq.float()).cpu())
            psnr_ceiling.append(psnr(self.target.decode(q.z_q, tuple(hq.shape[-3:])).float(), hq.float()).cpu())
            brightness["input"].append(_brightness_error(lq, hq))
            brightness["output"].append(_brightness_error(out, hq))
            for i, frames in enumerate(_degraded_frames(batch.get("meta"), hq.shape[0])):
                for f in frames:
                    if f < hq.shape[2]:
                        sel = (slice(i, i + 1), slice(None), slice(f, f + 1))
                        degraded["input"].append(psnr(lq[sel].float(), hq[sel].float()).cpu())
                        degraded["output"].append(psnr(out[sel].float(), hq[sel].float()).cpu())
        if not psnr_out:
            raise ValueError("no validation clips")
        metrics: dict[str, float] = {}
        for name, n in (("spatial", model.config.stage1.num_codes_spatial), ("temporal", model.config.stage1.num_codes_temporal)):
            tgt = torch.cat(targets[name])
            metrics[f"val_acc_{name}"] = hits[name] / tgt.numel()
            metrics[f"chance_{name}_uniform"] = 1.0 / n
            metrics[f"chance_{name}_majority"] = float(torch.bincount(tgt, minlength=n).max()) / tgt.numel()
        metrics.update(val_psnr_input=float(torch.cat(psnr_in).mean()), val_psnr_output=float(torch.cat(psnr_out).mean()),
                       val_psnr_stage1_hq=float(torch.cat(psnr_ceiling).mean()))
        metrics.update(val_brightness_error_input=float(torch.cat(brightness["input"]).mean()),
                       val_brightness_error_output=float(torch.cat(brightness["output"]).mean()))
        if degraded["input"]:  # de-flicker tasks: only some frames are degraded
            metrics.update(val_psnr_input_degraded_frames=float(torch.cat(degraded["input"]).mean()),
                           val_psnr_output_degraded_frames=float(torch.cat(degraded["output"]).mean()),
                           val_degraded_frames=len(degraded["input"]))
        return metrics

    @torch.no_grad()
    def samples(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Rows LQ, Stage II output, HQ for the first clips of the batch."""
        model = model.module if hasattr(model, "module") else model
        lq, hq = batch["lq"][: self.num_samples], batch["hq"][: self.num_samples]
        out = model.restore(lq)
        return {"restoration": clip_grid([r for trio in zip(lq, out, hq) for r in trio])}


def _fingerprint(cfg: Stage2TrainConfig, stage1: Stage1Model, phases: list) -> dict[str, Any]:
    digest = hashlib.sha256()
    for k, v in sorted(stage1.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    return {"config": to_dict(cfg), "phases": [list(p) for p in phases], "stage1_sha256": digest.hexdigest(),
            "code": code_fingerprint(__name__, "stcvq.data")}


def train_stage2(
    cfg: Stage2TrainConfig,
    stage1: Stage1Model,
    data_for: Callable[[str], ClipSource],
    out_dir: str | Path,
    val_batches: Callable[[], Iterable[dict[str, Any]]] | None = None,
    has_noisefree: bool = False,
    **train_kwargs,
) -> tuple[Stage2Model, list[TrainResult]]:
    """Train Stage II in its phases (see :meth:`Stage2TrainConfig.phases`), each a run of
    :func:`stcvq.train.train` in ``out_dir/<phase>`` (checkpoints + dvclive). ``data_for(lq)``
    gives the training source whose LQ member is ``lq`` ("lq" or "lq_noisefree"). A phase
    starts from the previous phase's final (EMA) weights.

    Resumes a killed run; a run dir left by another config, Stage I model or code (this module,
    the shard loader :mod:`stcvq.data` and every ``stcvq`` module they import) is wiped first
    (``out_dir/run.json`` records all three), so changed inputs never resume stale checkpoints.
    Returns the final (EMA) model and each phase's result."""
    out_dir = Path(out_dir)
    phases = cfg.phases(has_noisefree)
    fingerprint = _fingerprint(cfg, stage1, phases)
    reset_stale_run(out_dir, fingerprint)
    torch.manual_seed(cfg.train.seed)  # same initial weights on every process
    model = Stage2Model.from_stage1(stage1, cfg.model)
    objective = Stage2Objective(model, stage1, cfg.train.num_samples)
    results = []
    for name, lq, steps in phases:
        log.info("stage II phase %s: %d steps on %s", name, steps, lq)
        result = train(objective, data_for(lq), dataclasses.replace(cfg.train, steps=steps), out_dir / name,
                       val_batches=val_batches, **train_kwargs)
        results.append(result)
        final = result.ema_model if result.ema_model is not None else result.model
        model = Stage2Model(cfg.model)
        model.load_state_dict(final.state_dict())
        objective.model = model.freeze_stage1()
    return model.eval(), results


__all__ = ["EMBEDDED_STAGE1", "Stage2Arch", "MODEL_TYPE", "Stage2Config", "Stage2Model", "Stage2Objective", "Stage2Output",
           "Stage2TrainConfig", "TASKS", "bench_config", "default_config", "train_stage2"]
