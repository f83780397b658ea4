"""Building blocks of the 3D VQGAN: normalisation, residual blocks, resampling, attention.

All tensors are video feature maps shaped (B, C, T, H, W).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionLayout = Literal["global", "factorized"]
# ``stcvq``: this project's VQGAN layout. ``reference``: the layout of the published BFVR-STC
# network (their VQAutoEncoder3D), which the paper profile trains and the published checkpoints
# need; see stcvq/published/reference.py for every difference.
Layout = Literal["stcvq", "reference"]


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups (VQGAN's 32) or the largest divisor of ``channels`` below it."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6, affine=True)


class ResBlock3d(nn.Module):
    """GroupNorm -> SiLU -> 3x3x3 conv, twice, plus a (1x1x1 projected) skip connection."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample3d(nn.Module):
    """Strided 3x3x3 conv: halves H and W, and T too when ``temporal`` (input T must be even).

    ``layout="reference"`` (the published checkpoints): a temporal downsample zero-pads one
    frame, row and column at the END and convolves without padding (so output cell i reads
    inputs 2i .. 2i + 2, not 2i - 1 .. 2i + 1); a spatial one is a (1, 3, 3) kernel."""

    def __init__(self, channels: int, temporal: bool, layout: Layout = "stcvq"):
        super().__init__()
        self.temporal = temporal
        self.pad_end = layout == "reference" and temporal
        stride = (2 if temporal else 1, 2, 2)
        if layout == "reference":
            kernel, padding = ((3, 3, 3), 0) if temporal else ((1, 3, 3), (0, 1, 1))
        else:
            kernel, padding = 3, 1
        self.conv = nn.Conv3d(channels, channels, kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 1)) if self.pad_end else x)


class Upsample3d(nn.Module):
    """Nearest-neighbour x2 in H, W (and T when ``temporal``), then a 3x3x3 conv."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.scale = (2.0 if temporal else 1.0, 2.0, 2.0)
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


# Scores held at once by the blocked attention backward: 32 MiB of float32.
ATTENTION_BLOCK_ELEMENTS = 8 << 20


class _GemmBackwardAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v: torch's fused forward, and a backward that recomputes the
    scores for a block of queries at a time and runs as matrix products.

    An alternative to torch's fused CPU backward, for machines where plain matrix products run
    faster than it (docs/benchmarks.md, "Training-step cost of the paper profile"). Memory stays linear in
    the sequence length (one block of scores at a time), as with the fused kernel."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, k, v)
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v, out = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype)
        scale = q.shape[-1] ** -0.5
        # D_i = dO_i . O_i: the softmax backward's per-query term, in float32
        row_term = (grad_out.float() * out.float()).sum(-1, keepdim=True)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        length = q.shape[-2]
        block = max(1, ATTENTION_BLOCK_ELEMENTS // (k.shape[-2] * q[..., 0, 0].numel()))
        k_t, v_t = k.transpose(-2, -1), v.transpose(-2, -1)
        for a in range(0, length, block):
            q_block, grad_block = q[..., a : a + block, :], grad_out[..., a : a + block, :]
            probs = torch.matmul(q_block, k_t).float().mul_(scale).softmax(-1)
            grad_v += torch.matmul(probs.to(v.dtype).transpose(-2, -1), grad_block)
            grad_scores = torch.matmul(grad_block, v_t).float().sub_(row_term[..., a : a + block, :]).mul_(probs)
            grad_scores = grad_scores.mul_(scale).to(q.dtype)
            grad_q[..., a : a + block, :] = torch.matmul(grad_scores, k)
            grad_k += torch.matmul(grad_scores.transpose(-2, -1), q_block)
        return grad_q, grad_k, grad_v


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, gemm_backward: bool = False) -> torch.Tensor:
    """Multi-head SDPA over (N, L, C) token sequences; memory stays linear in L with fused kernels.
    ``gemm_backward``: the backward pass as blocked matrix products (:class:`_GemmBackwardAttention`)."""
    n, length, channels = q.shape
    split = lambda t: t.reshape(n, length, heads, channels // heads).transpose(1, 2)  # noqa: E731
    if gemm_backward and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = _GemmBackwardAttention.apply(split(q), split(k), split(v))
    else:
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(n, length, channels)


class SelfAttention3d(nn.Module):
    """Conv self-attention (1x1x1 q/k/v/out projections) with a residual connection.

    ``tokens`` says which latent positions attend to each other:
    ``global`` all t*h*w positions of a clip (the reference behaviour, cost grows with (t*h*w)^2);
    ``spatial`` the h*w positions of one latent frame; ``temporal`` the t frames at one position.
    ``residual=False`` returns the attention output alone (the published checkpoints' TA).
    ``gemm_backward`` (off by default): the backward pass as blocked matrix products, see
    :class:`_GemmBackwardAttention`; the same gradients up to float rounding.
    """

    gemm_backward: bool = False

    def __init__(self, channels: int, tokens: Literal["global", "spatial", "temporal"] = "global", heads: int = 1,
                 norm_groups: int = 32, residual: bool = True):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.tokens = tokens
        self.heads = heads
        self.residual = residual
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        # The 1x1x1 projections run as matrix products on (B, t, h, w, C) tokens: the same
        # weights and FLOPs, without the slow direct 1x1x1 conv3d kernel CPUs fall back to.
        # (2-D operands: a permuted 5-D one makes bf16 linear a bmm over a copied weight).
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(-1, c)
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias).reshape(b, t, h, w, 3 * c)
        q, k, v = qkv.chunk(3, dim=-1)
        if self.tokens == "global":  # (B, t*h*w, C); contiguous channels, else SDPA on CPU falls
            # back to its math kernel and materialises the (t*h*w)^2 attention matrix
            to_seq = lambda z: z.reshape(b, t * h * w, c).contiguous()  # noqa: E731
            out = _attend(to_seq(q), to_seq(k), to_seq(v), self.heads, self.gemm_backward).reshape(b, t, h, w, c)
        elif self.tokens == "spatial":  # (B*t, h*w, C)
            to_seq = lambda z: z.reshape(b * t, h * w, c).contiguous()  # noqa: E731
            out = _attend(to_seq(q), to_seq(k), to_seq(v), self.heads, self.gemm_backward).reshape(b, t, h, w, c)
        elif self.tokens == "temporal":  # (B*h*w, t, C)
            to_seq = lambda z: z.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, c)  # noqa: E731
            out = _attend(to_seq(q), to_seq(k), to_seq(v), self.heads, self.gemm_backward)
            out = out.reshape(b, h, w, t, c).permute(0, 3, 1, 2, 4)
        else:
            raise ValueError(f"unknown attention tokens {self.tokens!r}")
        out = F.linear(out.reshape(-1, c), self.proj.weight.flatten(1), self.proj.bias).reshape(b, t, h, w, c)
        out = out.permute(0, 4, 1, 2, 3)
        return x + out if self.residual else out


def attention_block(channels: int, layout: AttentionLayout, heads: int = 1) -> nn.Module:
    """``global``: one block over all latent tokens. ``factorized``: within each latent frame,
    then across time at each position (two blocks, so 2x the projection parameters)."""
    if layout == "global":
        return SelfAttention3d(channels, "global", heads)
    if layout == "factorized":
        return nn.Sequential(SelfAttention3d(channels, "spatial", heads), SelfAttention3d(channels, "temporal", heads))
    raise ValueError(f"unknown attention layout {layout!r}; expected 'global' or 'factorized'")
