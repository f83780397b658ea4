"""The Stage II model: an LQ encoder and two code lookup transformers on the frozen Stage I model.

::

    lq clip -> E_l (trainable, starts as a copy of E_h) -> z_l (B, D, t, h, w)
      T_S(z_l)                         -> spatial logits  -> argmax i_S
      T_T(TA(z_l) + Residual_t(z_l))   -> temporal logits -> argmax i_T
      C_S[i_S] + C_T[i_T] -> D_h -> restored clip

C_S, C_T, TA, the fusion and D_h are Stage I's, frozen (``requires_grad_(False)``; gradients
still flow *through* the frozen TA into E_l). The motion residual is taken along the time axis
(dim 2), which the reference code got wrong (docs/design.md).

Configs come from one builder, :meth:`Stage2Config.build` (a Stage I config, the task, the
clips and a :class:`Stage2Arch`): training calls it through
:meth:`stcvq.training.stage2.Stage2TrainConfig.model_config`, a named profile
(``PROFILES``: paper, embedded, tiny, reference) through :meth:`Stage2Config.profile`.

``save_pretrained`` writes a self-contained folder (every weight inference needs, Stage I parts
included; the HQ encoder is not needed for inference and is not stored) that
``Stage2Model.from_pretrained`` loads; ``Stage2Model(config)`` is a randomly initialised model
(what ``stcvq bench enhance`` measures). The model is a :class:`stcvq.inference.enhance.ClipRestorer`.

Resolution. The transformers' position tables are sized for the latent grid of the training
clips (``Stage2Config.latent_grid``); another input size is a ValueError unless the model is
loaded with ``interpolate_positions=True``, which resizes the spatial tables bicubically. That
costs index accuracy, the more the further the size is from the trained one
(``benchmarks/bench_stage2_positions.py`` measures it): resize inputs to the trained size where
possible (``stcvq enhance`` does), and interpolate for moderate changes only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from ..config import check, from_dict, to_dict
from ..tasks import Task, check_task
from .export import load_model_weights, read_model_config, save_model_folder
from .lookup import PAPER_TRANSFORMER_DEPTH, LookupConfig, LookupTransformer
from .vqgan import Stage1Config, Stage1Model

MODEL_TYPE = "stcvq-stage2"

# The paper's weight of the two cross-entropy terms, per task.
PAPER_LAMBDA_CE: dict[str, float] = {"bfvr": 1.0, "deflicker": 0.5, "deflicker-pixel": 0.5}


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Stage2Arch:
    """The Stage II choices a params file sets (``stage2.model``); the rest follows from Stage I
    and the clips. None: the paper's value for the task. Checked where they land, in the
    :class:`Stage2Config` and :class:`LookupConfig` that :meth:`Stage2Config.build` makes."""

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
    # stcvq: this project's transformers (an input projection, positions added to the tokens).
    # reference: the published network's (CodeFormer's: positions added to queries and keys
    # only, no input projection, a head without bias); the paper profile trains it.
    layout: Literal["stcvq", "reference"] = "stcvq"
    # time: T_T's input has the motion residual along time (the fix, docs/design.md).
    # reference: the published Stage II's residual over memory rows, which its weights were
    # trained with; only for running or fine-tuning the imported checkpoints.
    motion_residual: Literal["time", "reference"] = "time"


@dataclass
class Stage2Config:
    task: Task = "bfvr"  # checked by build, which reads the task's paper values, and by from_dict
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
        check(self.clip_length >= 1 and self.size >= 1, "clip_length and size must be >= 1")
        check(self.size % self.stage1.spatial_factor == 0,
              f"size {self.size} must be a multiple of Stage I's spatial factor {self.stage1.spatial_factor}")
        check(self.lambda_ce >= 0 and self.code_weight >= 0, "loss weights must be >= 0")
        check(self.residual_window is None or self.residual_window >= 1, "residual_window must be >= 1")
        check(self.motion_residual in ("time", "reference"),
              f"motion_residual must be time or reference, got {self.motion_residual!r}")
        for name, lookup, codes in (("spatial", self.spatial, self.stage1.num_codes_spatial),
                                    ("temporal", self.temporal, self.stage1.num_codes_temporal)):
            check(lookup.codebook_size == codes,
                  f"{name} transformer predicts {lookup.codebook_size} codes, Stage I has {codes}")
            check(lookup.latent_dim == self.stage1.latent_dim,
                  f"{name} transformer reads {lookup.latent_dim} channels, "
                  f"Stage I latents have {self.stage1.latent_dim}")
            check(tuple(lookup.grid) == self.latent_grid,
                  f"{name} transformer's position grid {tuple(lookup.grid)} != latent grid {self.latent_grid} "
                  f"of {self.clip_length} x {self.size}^2 clips (build configs with Stage2Config.build)")

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        """(t, h, w) of the latent of a clip_length x size^2 clip: the position tables' size."""
        return latent_grid(self.stage1, self.clip_length, self.size)

    @property
    def window(self) -> int:
        return self.residual_window or self.stage1.residual_window

    @classmethod
    def build(cls, stage1: Stage1Config, task: str, clip_length: int, size: int,
              arch: Stage2Arch = Stage2Arch()) -> "Stage2Config":
        """The config whose transformers fit ``stage1`` and the latent grid of clip_length x
        size^2 clips, with ``arch``'s choices (None: the paper's value for ``task``)."""
        layers, heads = PAPER_TRANSFORMER_DEPTH[check_task(task)]
        grid = latent_grid(stage1, clip_length, size)

        def lookup(codes: int) -> LookupConfig:
            return LookupConfig(codebook_size=codes, latent_dim=stage1.latent_dim, width=arch.width,
                                layers=arch.layers if arch.layers is not None else layers,
                                heads=arch.heads if arch.heads is not None else heads, ffn=arch.ffn,
                                dropout=arch.dropout, token_layout=arch.token_layout, grid=grid,
                                interpolate_positions=arch.interpolate_positions, layout=arch.layout)

        return cls(task=task, stage1=stage1, spatial=lookup(stage1.num_codes_spatial),
                   temporal=lookup(stage1.num_codes_temporal), clip_length=clip_length, size=size,
                   lambda_ce=arch.lambda_ce if arch.lambda_ce is not None else PAPER_LAMBDA_CE[task],
                   code_weight=arch.code_weight, residual_window=arch.residual_window,
                   motion_residual=arch.motion_residual)

    @classmethod
    def profile(cls, name: str, task: str = "bfvr", **overrides) -> "Stage2Config":
        """The config of profile ``name`` (see ``PROFILES``) for ``task``. ``overrides``:
        ``stage1``, ``clip_length``, ``size`` and any :class:`Stage2Arch` field."""
        check(name in PROFILES, f"profile must be one of {list(PROFILES)}, got {name!r}")
        profile = PROFILES[name]
        arch_fields = {f.name for f in dataclasses.fields(Stage2Arch)}
        unknown = sorted(set(overrides) - arch_fields - {"stage1", "clip_length", "size"})
        check(not unknown, f"unknown Stage II profile overrides {unknown}")
        stage1 = overrides.pop("stage1", None) or profile.stage1()
        clip_length = overrides.pop("clip_length", profile.clip_length)
        size = overrides.pop("size", profile.size)
        return cls.build(stage1, task, clip_length, size, dataclasses.replace(profile.arch, **overrides))

    def with_interpolated_positions(self, enabled: bool = True) -> "Stage2Config":
        return dataclasses.replace(
            self, spatial=dataclasses.replace(self.spatial, interpolate_positions=enabled),
            temporal=dataclasses.replace(self.temporal, interpolate_positions=enabled))


def latent_grid(stage1: Stage1Config, clip_length: int, size: int) -> tuple[int, int, int]:
    """(t, h, w) of the Stage I latent of a clip_length x size^2 clip."""
    side = size // stage1.spatial_factor
    return (math.ceil(clip_length / stage1.temporal_factor), side, side)


@dataclass(frozen=True)
class Stage2Profile:
    """A named Stage II network: its Stage I, its clips and its architecture choices."""

    stage1: Callable[[], Stage1Config]
    clip_length: int
    size: int
    arch: Stage2Arch


PROFILES: dict[str, Stage2Profile] = {
    # the paper's: the published network (Stage I and the transformers) on 24 x 512^2 clips, width
    # 256, FFN 512, the paper's depths, with the motion residual along time
    "paper": Stage2Profile(Stage1Config.paper, 24, 512, Stage2Arch(layout="reference")),
    # params.yaml's Stage II sizes (8 x 64^2 clips, width 64, 2 layers) on Stage1Config.tiny(),
    # whose codebooks have 64 codes; the pipeline builds the same sizes on its trained Stage I
    # (params.yaml stage1: 256 codes each), so only the logits heads differ
    "embedded": Stage2Profile(Stage1Config.tiny, 8, 64, Stage2Arch(width=64, ffn=128, layers=2)),
    # CPU-test-sized on Stage1Config.tiny(): 4 x 16^2 clips -> latent (2, 4, 4)
    "tiny": Stage2Profile(Stage1Config.tiny, 4, 16, Stage2Arch(width=16, ffn=32, layers=1, heads=2)),
    # the published checkpoints' network; its 64 x 64 position tables fix the input at 512^2
    "reference": Stage2Profile(lambda: Stage1Config.paper(layout="reference"), 24, 512,
                               Stage2Arch(layout="reference", motion_residual="reference")),
}


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

    def set_activation_checkpointing(self, enabled: bool) -> "Stage2Model":
        """Recompute the LQ encoder's and both transformers' blocks in the backward pass: the
        same gradients for about one more forward of each."""
        self.vqgan.set_activation_checkpointing(enabled)
        self.spatial_transformer.checkpointing = self.temporal_transformer.checkpointing = bool(enabled)
        return self

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
                "(resizes the learned position tables; costs accuracy, see the stcvq.nn.restorer docs)")

    def temporal_input(self, z: torch.Tensor) -> torch.Tensor:
        """T_T's input: Stage I's temporal latent TA(z) + Residual(z) of z, with this model's
        window (``motion_residual="reference"``: the published checkpoints' residual)."""
        return self.vqgan.temporal(z, self.config.window, self.config.motion_residual)

    def forward(self, lq: torch.Tensor) -> Stage2Output:
        self._check_size(lq)
        z = self.vqgan.encode(lq)
        return Stage2Output(z, self.spatial_transformer(z), self.temporal_transformer(self.temporal_input(z)))

    @torch.no_grad()
    def predict_indices(self, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self(lq)
        return out.logits_spatial.argmax(1), out.logits_temporal.argmax(1)

    @torch.no_grad()
    def restore(self, clips: torch.Tensor, fidelity: float = 0.0) -> torch.Tensor:
        """(B, 3, T, size, size) in [0, 1], any T >= 1 (clip layout: T <= clip_length) -> same
        shape, clamped to [0, 1] (never min-max renormalised).

        ``fidelity`` in [0, 1] is the decoder's input ``(1 - w) z_q + w z_l``: the looked-up codes
        at 0, the LQ encoder's own latent at 1 (training pulls z_l towards z_q, so the decoder
        reads both; CodeFormer's w plays the same part)."""
        check(0.0 <= fidelity <= 1.0, f"fidelity must be in 0..1, got {fidelity}")
        out = self(clips)
        z_q = self.vqgan.lookup(out.logits_spatial.argmax(1), out.logits_temporal.argmax(1))
        if fidelity > 0:  # w = 0 stays the codes exactly
            z_q = torch.lerp(z_q, out.latent.to(z_q.dtype), fidelity)
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


__all__ = ["MODEL_TYPE", "PAPER_LAMBDA_CE", "PROFILES", "Stage2Arch", "Stage2Config",
           "Stage2Model", "Stage2Output", "Stage2Profile", "latent_grid"]
