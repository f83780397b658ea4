"""3D conv encoder and decoder of the Stage I VQGAN (docs/design.md section 2).

Level i has ``num_res_blocks`` residual blocks at width ``nf * ch_mult[i]``; between levels a
downsample halves H and W, and T too for the levels flagged in ``temporal_downsample`` (the
paper: only the first). Self-attention runs after every residual block of the lowest level and
in the middle block (res -> attn -> res). The decoder mirrors it.

Any clip size: :func:`pad_clip` pads T, H, W up to multiples of the compression factors by
repeating the last frame / edge pixels ("replicate"), :func:`crop_clip` cuts the decoded clip
back. Replicate padding keeps the padded border close to real content, so the border pixels of
the real area reconstruct as well as the interior. T = 1 becomes 2 identical frames.

``layout="reference"`` builds the published BFVR-STC checkpoints' layout instead (their
VQAutoEncoder3D; every difference is listed in stcvq/published/reference.py): reference downsampling
kernels, no activation between the last GroupNorm and conv of either network, and a decoder
whose two lowest levels both run at the latent resolution with attention, its temporal
upsample coming last (at full resolution).

Without gradients (inference), the layers outside the attention levels run a few frames at a
time once a feature map exceeds ``chunk_bytes`` (:mod:`stcvq.nn.chunked`; same result, bounded
memory). ``chunk_bytes = None`` runs every layer whole.

With gradients and ``checkpointing`` on, each residual block (with its attention), each
resampling layer and the output head keep only their input for the backward pass and run again
there (:func:`torch.utils.checkpoint.checkpoint`): the same gradients for about one more
forward of compute, and only the block inputs held instead of every intermediate map.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import chunked
from .blocks import AttentionLayout, Downsample3d, Layout, ResBlock3d, Upsample3d, attention_block, group_norm


def pad_clip(x: torch.Tensor, temporal_factor: int, spatial_factor: int) -> torch.Tensor:
    """Replicate-pad (B, C, T, H, W) at the end of T, H and W to multiples of the factors."""
    t, h, w = x.shape[-3:]
    pad_t = -t % temporal_factor
    pad_h = -h % spatial_factor
    pad_w = -w % spatial_factor
    if pad_t == pad_h == pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h, 0, pad_t), mode="replicate")


# Widest feature map of one chunk in inference: 128 MiB is 2 frames of 64 x 512^2 float32.
CHUNK_BYTES = 128 << 20


def crop_clip(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    t, h, w = size
    return x[..., :t, :h, :w]


class _Stack(nn.Module):
    """What the encoder and decoder share: how one of their layers runs (chunked without
    gradients, optionally checkpointed with them) and the output head."""

    chunk_bytes: int | None = CHUNK_BYTES
    checkpointing: bool = False
    norm_out: nn.GroupNorm
    conv_out: nn.Conv3d
    activate_out: bool

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """``fn(h)``; with ``checkpointing`` on and gradients recorded, ``fn``'s intermediate maps
        are recomputed in the backward pass instead of kept."""
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, h, use_reentrant=False)
        return fn(h)

    def _layer(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return self._run(partial(chunked.run, layer, budget_bytes=self.chunk_bytes), h)

    def _block(self, block: nn.Module, attn: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return self._run(lambda x: attn(chunked.run(block, x, self.chunk_bytes)), h)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        head = partial(chunked.run, self.conv_out, budget_bytes=self.chunk_bytes, norm=self.norm_out,
                       activate=self.activate_out)
        return self._run(head, h)


class Encoder3d(_Stack):
    def __init__(
        self,
        in_channels: int,
        nf: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        latent_dim: int,
        temporal_downsample: Sequence[bool],
        attn_layout: AttentionLayout = "global",
        attn_heads: int = 1,
        layout: Layout = "stcvq",
    ):
        super().__init__()
        if len(temporal_downsample) != len(ch_mult) - 1:
            raise ValueError("temporal_downsample needs one flag per downsample (len(ch_mult) - 1)")
        self.activate_out = layout != "reference"
        self.conv_in = nn.Conv3d(in_channels, nf * ch_mult[0], 3, padding=1)
        self.levels = nn.ModuleList()
        width = nf * ch_mult[0]
        last = len(ch_mult) - 1
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            level.attns = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.blocks.append(ResBlock3d(width, nf * mult))
                width = nf * mult
                level.attns.append(attention_block(width, attn_layout, attn_heads) if i == last else nn.Identity())
            level.down = Downsample3d(width, temporal_downsample[i], layout) if i < last else nn.Identity()
            self.levels.append(level)
        self.mid = nn.Sequential(ResBlock3d(width, width), attention_block(width, attn_layout, attn_heads),
                                 ResBlock3d(width, width))
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv3d(width, latent_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = chunked.run(self.conv_in, x, self.chunk_bytes)
        for level in self.levels:
            for block, attn in zip(level.blocks, level.attns):
                h = self._block(block, attn, h)
            h = self._layer(level.down, h)
        return self._head(self._layer(self.mid, h))


class Decoder3d(_Stack):
    def __init__(
        self,
        out_channels: int,
        nf: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        latent_dim: int,
        temporal_downsample: Sequence[bool],
        attn_layout: AttentionLayout = "global",
        attn_heads: int = 1,
        layout: Layout = "stcvq",
    ):
        super().__init__()
        last = len(ch_mult) - 1
        reference = layout == "reference"
        self.activate_out = not reference
        # Levels at the latent resolution get attention: the lowest one, and in the reference
        # layout also the next (its upsample comes after that level, not before it).
        attention_levels = {last, last - 1} if reference else {last}
        width = nf * ch_mult[last]
        self.conv_in = nn.Conv3d(latent_dim, width, 3, padding=1)
        self.mid = nn.Sequential(ResBlock3d(width, width), attention_block(width, attn_layout, attn_heads),
                                 ResBlock3d(width, width))
        self.levels = nn.ModuleList()  # lowest resolution first
        for i in reversed(range(len(ch_mult))):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            level.attns = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.blocks.append(ResBlock3d(width, nf * ch_mult[i]))
                width = nf * ch_mult[i]
                attention = attention_block(width, attn_layout, attn_heads) if i in attention_levels else nn.Identity()
                level.attns.append(attention)
            if reference:  # undoes the encoder's downsample after level i, at this level's end
                level.up = Upsample3d(width, temporal_downsample[i]) if i < last else nn.Identity()
            else:  # undoes the encoder's downsample into level i, so the levels mirror the encoder's
                level.up = Upsample3d(width, temporal_downsample[i - 1]) if i > 0 else nn.Identity()
            self.levels.append(level)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv3d(width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self._layer(self.mid, self.conv_in(z))
        for level in self.levels:
            for block, attn in zip(level.blocks, level.attns):
                h = self._block(block, attn, h)
            h = self._layer(level.up, h)
        return self._head(h)
