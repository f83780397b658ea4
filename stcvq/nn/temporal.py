"""The temporal latent z_T = TA(z) + Residual(z, window) and the codebook fusions.

TA is a residual attention block across latent frames at each spatial position (a
(B*h*w, t, D) sequence); it has no zero-initialised projection, so every weight gets
gradient from the first step. The motion residual is taken along the time axis (dim 2 of
(B, D, t, h, w)); the first ``window`` frames have no predecessor and get zeros.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .blocks import SelfAttention3d
from .runtime import no_autocast

FusionMode = Literal["add", "conv", "fft3d"]
MotionResidual = Literal["time", "reference"]


def temporal_residual(z: torch.Tensor, window: int = 1) -> torch.Tensor:
    """z[:, :, t] - z[:, :, t - window] for t >= window, zeros for the first frames."""
    if window < 1:
        raise ValueError("window must be >= 1")
    out = torch.zeros_like(z)
    if z.shape[2] > window:
        out[:, :, window:] = z[:, :, window:] - z[:, :, :-window]
    return out


def reference_stage2_residual(z: torch.Tensor) -> torch.Tensor:
    """The motion residual of the published Stage II (CodeFormer3D), which is NOT along time.

    It permutes z (B, C, t, h, w) to (C, B, t, h, w), reads that memory as t rows, and takes
    row r minus row r - 1 (row 0 -> zeros); the rows are then read back as (t, B, h, w, C) and
    returned here as (B, C, t, h, w). Rows mix channels, frames and positions, so this is a
    difference of unrelated values for every latent frame after the first. The published
    weights were trained with it, so running them needs it; stcvq's own models never use it."""
    b, c, t, h, w = z.shape
    rows = z.permute(1, 0, 2, 3, 4).reshape(t, -1)
    diff = torch.cat([torch.zeros_like(rows[:1]), rows[1:] - rows[:-1]])
    return diff.reshape(t, b, h, w, c).permute(1, 4, 0, 2, 3)


class TemporalAttention(nn.Module):
    """TA: x + attn_over_time(norm(x)) at every latent position.

    ``reference``: the published checkpoints' TA, GroupNorm with 16 groups and no residual add."""

    def __init__(self, dim: int, heads: int = 1, reference: bool = False):
        super().__init__()
        if reference:
            self.attn = SelfAttention3d(dim, "temporal", heads, norm_groups=16, residual=False)
        else:
            self.attn = SelfAttention3d(dim, "temporal", heads)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.attn(z)


class TemporalLatent(nn.Module):
    """z_T = TA(z) + Residual(z, window)."""

    def __init__(self, dim: int, heads: int = 1, window: int = 1, reference: bool = False):
        super().__init__()
        self.window = window
        self.attention = TemporalAttention(dim, heads, reference)

    def forward(self, z: torch.Tensor, window: int | None = None,
                motion_residual: MotionResidual = "time") -> torch.Tensor:
        """``window``: the residual's, None for this module's own (Stage II may set another).
        ``motion_residual="reference"``: the published Stage II's residual instead."""
        attended = self.attention(z)
        if motion_residual == "reference":
            return attended + reference_stage2_residual(z)
        return attended + temporal_residual(z, window or self.window)


class Fusion(nn.Module):
    """Combine the quantised spatial and temporal latents (the paper's fusion ablation).

    ``add``   z_S + z_T (the paper's best, no parameters).
    ``conv``  a 1x1x1 conv over the channel concatenation, initialised to the sum.
    ``fft3d`` per-channel learnable weights on the 3D spectra (over t, h, w) of both latents,
              summed and transformed back; initialised to the sum.
    """

    def __init__(self, mode: FusionMode, dim: int):
        super().__init__()
        self.mode = mode
        if mode == "conv":
            self.conv = nn.Conv3d(2 * dim, dim, 1)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.bias.zero_()
                eye = torch.eye(dim)[:, :, None, None, None]
                self.conv.weight[:, :dim] = eye
                self.conv.weight[:, dim:] = eye
        elif mode == "fft3d":
            self.weight_spatial = nn.Parameter(torch.ones(dim, 1, 1, 1))
            self.weight_temporal = nn.Parameter(torch.ones(dim, 1, 1, 1))
        elif mode != "add":
            raise ValueError(f"unknown fusion {mode!r}; expected add, conv or fft3d")

    def forward(self, z_spatial: torch.Tensor, z_temporal: torch.Tensor) -> torch.Tensor:
        if self.mode == "add":
            return z_spatial + z_temporal
        if self.mode == "conv":
            return self.conv(torch.cat([z_spatial, z_temporal], dim=1))
        dims = (-3, -2, -1)
        with no_autocast(z_spatial.device):
            spec = self.weight_spatial * torch.fft.fftn(z_spatial.float(), dim=dims)
            spec = spec + self.weight_temporal * torch.fft.fftn(z_temporal.float(), dim=dims)
            return torch.fft.ifftn(spec, dim=dims).real.to(z_spatial.dtype)
