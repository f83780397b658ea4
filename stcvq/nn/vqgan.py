"""The Stage I model: 3D VQGAN with a spatial and a temporal codebook (docs/design.md section 1).

x (B, 3, T, H, W) in [0, 1] -> encode -> z (B, D, t, h, w)
  z_S = z                      -> spatial codebook C_S  -> indices_spatial
  z_T = TA(z) + Residual(z)    -> temporal codebook C_T -> indices_temporal
  z_q = fuse(C_S[i_S], C_T[i_T]) -> decode -> reconstruction (B, 3, T, H, W)

encode / quantize / lookup / decode are separate so Stage II can reuse the frozen pieces
(predict indices, then ``lookup`` and ``decode``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..config import check, from_dict, to_dict
from .autoencoder import Decoder3d, Encoder3d, crop_clip, pad_clip
from .blocks import Layout, SelfAttention3d
from .export import load_model_weights, read_model_config, save_model_folder
from .quantize import VectorQuantizer
from .temporal import Fusion, TemporalLatent

MODEL_TYPE = "stcvq-stage1"


@dataclass
class Stage1Config:
    in_channels: int = 3
    nf: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 2
    # one flag per downsample: does it also halve T? The paper: only the first.
    temporal_downsample: tuple[bool, ...] = (True, False, False)
    attn_layout: Literal["global", "factorized"] = "global"
    attn_heads: int = 1
    latent_dim: int = 256
    num_codes_spatial: int = 1024
    num_codes_temporal: int = 1024
    beta: float = 0.25
    regularizer: Literal["none", "pdr", "mpr"] = "mpr"
    reg_weight: float = 1.0
    reg_eps: float = 1e-6
    reg_power: float = 1.0  # exponent on 1/D in the similarity (1 = Eq. 6 as printed; see quantize.py)
    # uniform: VQGAN's U(-1/N, 1/N), the reference code's; normal: N(0, codebook_init_std^2) per
    # coordinate. At small scale MPR raised codebook use over none from normal, not from uniform
    # (docs/results.md, "Codebook use").
    codebook_init: Literal["uniform", "normal"] = "uniform"
    codebook_init_std: float = 0.1
    residual_window: int = 1
    ta_heads: int = 1
    fusion: Literal["add", "conv", "fft3d"] = "add"
    # stcvq: this project's VQGAN. reference: the published network's layout (stcvq/published/reference.py
    # lists the differences): the paper profile's, and the one the published checkpoints need.
    layout: Layout = "stcvq"

    def __post_init__(self) -> None:
        check(len(self.ch_mult) >= 1, "ch_mult needs at least one level")
        check(len(self.temporal_downsample) == len(self.ch_mult) - 1,
              f"temporal_downsample needs {len(self.ch_mult) - 1} flags (one per downsample)")
        check(self.nf > 0 and self.latent_dim > 0 and self.num_res_blocks >= 1, "sizes must be positive")
        check(self.latent_dim % self.attn_heads == 0 and self.latent_dim % self.ta_heads == 0,
              "latent_dim must be divisible by attn_heads and ta_heads")
        check(self.nf * self.ch_mult[-1] % self.attn_heads == 0, "lowest-level width must be divisible by attn_heads")
        check(self.num_codes_spatial >= 2 and self.num_codes_temporal >= 2, "codebooks need >= 2 codes")
        check(self.beta >= 0 and self.reg_weight >= 0 and self.reg_eps > 0 and self.reg_power > 0,
              "beta, reg_weight >= 0; reg_eps, reg_power > 0")
        check(self.codebook_init in ("uniform", "normal") and self.codebook_init_std > 0,
              f"codebook_init must be uniform or normal (got {self.codebook_init!r}), codebook_init_std > 0")
        check(self.residual_window >= 1, "residual_window must be >= 1")
        check(self.layout in ("stcvq", "reference"), f"layout must be stcvq or reference, got {self.layout!r}")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(f) for f in self.temporal_downsample)

    @classmethod
    def paper(cls, layout: Layout = "reference", **overrides) -> "Stage1Config":
        """The paper's profile: nf 32, [1,2,4,8], x8 spatial, x2 temporal, in the published
        network's layout (39.32 M parameters, the reference VQAutoEncoder3D's count); stcvq's
        own fixes live outside the layout and stay on. ``layout="stcvq"``: this project's VQGAN
        at the same sizes (41.3 M)."""
        return cls(layout=layout, **overrides)

    @classmethod
    def tiny(cls, **overrides) -> "Stage1Config":
        """A CPU-test-sized model with the same structure (x4 spatial, x2 temporal)."""
        base = dict(nf=8, ch_mult=(1, 2, 4), num_res_blocks=1, temporal_downsample=(True, False),
                    latent_dim=16, num_codes_spatial=64, num_codes_temporal=64)
        base.update(overrides)
        return cls(**base)


@dataclass
class Stage1Quantized:
    z_q: torch.Tensor  # fused quantised latent (B, D, t, h, w), straight-through
    indices_spatial: torch.Tensor  # (B, t, h, w)
    indices_temporal: torch.Tensor  # (B, t, h, w)
    loss: torch.Tensor  # both codebooks' VQ + regulariser losses
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Stage1Output:
    reconstruction: torch.Tensor  # (B, 3, T, H, W), unclamped, [0, 1] nominal
    quantized: Stage1Quantized


class Stage1Model(nn.Module):
    def __init__(self, config: Stage1Config):
        super().__init__()
        self.config = config
        c = config
        arch = dict(nf=c.nf, ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks, latent_dim=c.latent_dim,
                    temporal_downsample=c.temporal_downsample, attn_layout=c.attn_layout, attn_heads=c.attn_heads,
                    layout=c.layout)
        self.reference = c.layout == "reference"
        self.encoder = Encoder3d(c.in_channels, **arch)
        self.temporal = TemporalLatent(c.latent_dim, c.ta_heads, c.residual_window, reference=self.reference)
        vq = dict(beta=c.beta, regularizer=c.regularizer, reg_weight=c.reg_weight, reg_eps=c.reg_eps,
                  reg_power=c.reg_power, init=c.codebook_init, init_std=c.codebook_init_std)
        self.spatial_codebook = VectorQuantizer(c.num_codes_spatial, c.latent_dim, **vq)
        self.temporal_codebook = VectorQuantizer(c.num_codes_temporal, c.latent_dim, **vq)
        self.fusion = Fusion(c.fusion, c.latent_dim)
        self.decoder = Decoder3d(c.in_channels, **arch)
        self.channels_last = False

    # -- training options: how the same network runs, not what it computes ------------------
    def set_activation_checkpointing(self, enabled: bool) -> "Stage1Model":
        """Recompute each encoder and decoder block in the backward pass instead of keeping its
        intermediate maps: the same gradients for about one more forward of compute."""
        self.encoder.checkpointing = self.decoder.checkpointing = bool(enabled)
        return self

    def set_gemm_attention_backward(self, enabled: bool) -> "Stage1Model":
        """Run the encoder's and decoder's attention backward as blocked matrix products instead
        of torch's fused kernel (:class:`stcvq.nn.blocks.SelfAttention3d`). The same gradients
        up to float rounding."""
        for net in (self.encoder, self.decoder):
            for module in net.modules():
                if isinstance(module, SelfAttention3d):
                    module.gemm_backward = bool(enabled)
        return self

    def set_channels_last(self, enabled: bool) -> "Stage1Model":
        """Hold conv weights and feature maps channels-last (N, T, H, W, C in memory): oneDNN's
        convs then read and write them without reordering copies, and attention's tokens are a
        view. Results equal the default layout's up to float rounding."""
        self.channels_last = bool(enabled)
        return self.to(memory_format=torch.channels_last_3d if enabled else torch.contiguous_format)

    # -- the four steps ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) in [0, 1], any T >= 1 and H, W >= 1 -> latent (B, D, t, h, w).

        The clip is replicate-padded to multiples of the compression factors first, so
        t = ceil(T / temporal_factor), h = ceil(H / spatial_factor); ``decode(..., size=(T, H, W))``
        crops back."""
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected (B, {self.config.in_channels}, T, H, W), got {tuple(x.shape)}")
        # the reference layout reads [0, 1] as it is; stcvq's centres it on zero
        x = pad_clip(x if self.reference else x * 2 - 1, self.config.temporal_factor, self.config.spatial_factor)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.encoder(x)

    def temporal_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.temporal(z)

    def quantize(self, z: torch.Tensor) -> Stage1Quantized:
        spatial = self.spatial_codebook.quantize(z)
        temporal = self.temporal_codebook.quantize(self.temporal_latent(z))
        terms = {f"spatial_{k}": v for k, v in spatial.terms.items()}
        terms.update({f"temporal_{k}": v for k, v in temporal.terms.items()})
        z_q = self.fusion(spatial.quantized, temporal.quantized)
        return Stage1Quantized(z_q, spatial.indices, temporal.indices, spatial.loss + temporal.loss, terms)

    def lookup(self, indices_spatial: torch.Tensor, indices_temporal: torch.Tensor) -> torch.Tensor:
        """Fused latent from code indices (Stage II inference)."""
        spatial = self.spatial_codebook.lookup(indices_spatial)
        temporal = self.temporal_codebook.lookup(indices_temporal)
        return self.fusion(spatial, temporal)

    def decode(self, z_q: torch.Tensor, size: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Latent -> clip in [0, 1] (not clamped; a sigmoid in the reference layout); ``size`` =
        (T, H, W) crops the padding off."""
        x = torch.sigmoid(self.decoder(z_q)) if self.reference else (self.decoder(z_q) + 1) / 2
        return crop_clip(x, size) if size is not None else x

    def forward(self, x: torch.Tensor) -> Stage1Output:
        q = self.quantize(self.encode(x))
        return Stage1Output(self.decode(q.z_q, tuple(x.shape[-3:])), q)

    # -- export -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, provenance: dict | None = None) -> None:
        """``model.safetensors`` (all weights) + ``config.json``, each written atomically."""
        save_model_folder(directory, self, MODEL_TYPE, to_dict(self.config), provenance)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "Stage1Model":
        raw, config_path = read_model_config(directory, MODEL_TYPE)
        model = cls(from_dict(Stage1Config, raw, where=str(config_path)))
        load_model_weights(directory, model, map_location)
        return model
