"""Stage II code lookup transformer: LQ latent features -> logits over a codebook's codes.

One transformer predicts spatial-codebook indices from the LQ spatial latent, a second one
temporal-codebook indices from the LQ temporal latent (docs/design.md, Stage II).

Token layouts (``token_layout``):

* ``frame``: tokens attend within their latent frame (h*w tokens per sequence). Cost grows
  linearly with clip length, and any number of latent frames works.
* ``clip``: all t*h*w tokens of the clip in one sequence, as the paper's figure draws it. With
  ``scaled_dot_product_attention`` memory stays linear in tokens, compute is quadratic.

Position embeddings are learnable and factorised: one per spatial position of the latent grid
(h, w) and one per latent frame (clip layout only; up to ``grid[0]`` frames). They are sized
from the latent grid the model is trained at. Meeting another grid is an error unless
``interpolate_positions`` is set, in which case the spatial table is resized bicubically (the
reference code hard-coded 64x64 and failed at any other resolution).

``layout="reference"`` is the published checkpoints' transformer (CodeFormer's
TransformerSALayer stack): no input projection (tokens are the latent itself), the spatial
position table added to the queries and keys of every layer instead of once to the tokens,
and a logits head without bias; frame token layout only.

With ``checkpointing`` on and gradients recorded, each block's activations are recomputed in
the backward pass instead of kept: at the paper's 12 x 64 x 64 latent a block keeps about
0.7 GB of them, so the two 9-layer BFVR transformers would hold about 12 GB.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stcvq.config import check

# (layers, heads) of both lookup transformers in the paper, per task; the published checkpoints have them too.
PAPER_TRANSFORMER_DEPTH: dict[str, tuple[int, int]] = {"bfvr": (9, 2), "deflicker": (6, 4), "deflicker-pixel": (6, 4)}


@dataclasses.dataclass(frozen=True)
class LookupConfig:
    codebook_size: int = 1024  # N_S or N_T
    latent_dim: int = 256  # D of the latent features it reads
    width: int = 256
    layers: int = 9
    heads: int = 2
    ffn: int = 512
    dropout: float = 0.0
    token_layout: Literal["frame", "clip"] = "frame"
    grid: tuple[int, int, int] = (12, 64, 64)  # latent (t, h, w) the position tables are sized for
    interpolate_positions: bool = False
    layout: Literal["stcvq", "reference"] = "stcvq"

    def __post_init__(self):
        check(self.width % self.heads == 0, f"width {self.width} must divide into {self.heads} heads")
        check(self.layers >= 1 and self.codebook_size >= 2, "need >= 1 layer and >= 2 codes")
        check(self.token_layout in ("frame", "clip"), f"token_layout must be frame or clip, got {self.token_layout}")
        check(all(g >= 1 for g in self.grid), f"grid must be positive, got {self.grid}")
        check(self.layout in ("stcvq", "reference"), f"layout must be stcvq or reference, got {self.layout!r}")
        if self.layout == "reference":
            check(self.width == self.latent_dim and self.token_layout == "frame",
                  "the reference layout reads the latent as tokens: width == latent_dim, token_layout frame")

    @classmethod
    def paper(cls, task: str = "bfvr", **overrides) -> "LookupConfig":
        """The paper's transformer: the published layout, width 256, FFN 512, the task's depth
        (PAPER_TRANSFORMER_DEPTH)."""
        layers, heads = PAPER_TRANSFORMER_DEPTH[task]
        return cls(**{"layers": layers, "heads": heads, "layout": "reference", **overrides})


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + FFN block, attention through scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, width))

    def forward(self, x: torch.Tensor, qk_position: torch.Tensor | None = None) -> torch.Tensor:
        """``qk_position``: added to the normalised tokens for the queries and keys only (values
        see the tokens alone), as CodeFormer's layers take their position embedding."""
        b, n, c = x.shape
        y = self.norm1(x)
        if qk_position is None:
            qkv = self.qkv(y)
        else:
            weight, bias = self.qkv.weight, self.qkv.bias
            qkv = torch.cat([F.linear(y + qk_position, weight[: 2 * c], bias[: 2 * c]),
                             F.linear(y, weight[2 * c :], bias[2 * c :])], dim=-1)
        q, k, v = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class LookupTransformer(nn.Module):
    """(B, D, t, h, w) latent features -> (B, N, t, h, w) code logits."""

    checkpointing: bool = False

    def __init__(self, config: LookupConfig):
        super().__init__()
        self.config = config
        t, h, w = config.grid
        self.reference = config.layout == "reference"
        self.proj_in = nn.Identity() if self.reference else nn.Linear(config.latent_dim, config.width)
        self.spatial_position = nn.Parameter(torch.zeros(1, h * w, config.width))
        self.temporal_position = (
            nn.Parameter(torch.zeros(1, t, 1, config.width)) if config.token_layout == "clip" else None
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(config.width, config.heads, config.ffn, config.dropout) for _ in range(config.layers)
        )
        self.norm_out = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.codebook_size, bias=not self.reference)
        nn.init.trunc_normal_(self.spatial_position, std=0.02)
        if self.temporal_position is not None:
            nn.init.trunc_normal_(self.temporal_position, std=0.02)

    def positions(self, t: int, h: int, w: int) -> torch.Tensor:
        """Position embeddings for a (t, h, w) latent grid, shaped (1, t, h*w, width)."""
        grid_t, grid_h, grid_w = self.config.grid
        spatial = self.spatial_position
        if (h, w) != (grid_h, grid_w):
            if not self.config.interpolate_positions:
                raise ValueError(
                    f"position embeddings were trained for a {grid_h}x{grid_w} latent grid, got {h}x{w}: "
                    "use the resolution the model was trained at, or set interpolate_positions=True "
                    "(resizes the learned table; costs quality, see docs/benchmarks.md)"
                )
            table = spatial.reshape(1, grid_h, grid_w, -1).permute(0, 3, 1, 2)
            table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
            spatial = table.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        spatial = spatial.unsqueeze(1)  # (1, 1, h*w, C)
        if self.temporal_position is None:
            return spatial
        if t > grid_t:
            raise ValueError(
                f"clip token layout has position embeddings for {grid_t} latent frames, got {t}: "
                "enhance longer videos in windows (stcvq enhance does) or train with a longer clip"
            )
        return spatial + self.temporal_position[:, :t]

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        b, d, t, h, w = latent.shape
        check(d == self.config.latent_dim, f"latent has {d} channels, transformer expects {self.config.latent_dim}")
        x = self.proj_in(latent.permute(0, 2, 3, 4, 1).reshape(b, t, h * w, d))
        positions = self.positions(t, h, w)
        qk_position = None
        if self.reference:
            qk_position = positions.reshape(1, h * w, -1)
        else:
            x = x + positions
        if self.config.token_layout == "frame":
            x = x.reshape(b * t, h * w, -1)
        else:
            x = x.reshape(b, t * h * w, -1)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, qk_position, use_reentrant=False)
            else:
                x = block(x, qk_position)
        logits = self.head(self.norm_out(x))  # (b*t, hw, N) or (b, thw, N)
        return logits.reshape(b, t, h, w, -1).permute(0, 4, 1, 2, 3)

    def attention_flops(self, t: int, h: int, w: int) -> int:
        """Multiply-adds x 2 of the attention products (QK^T and AV) for one clip."""
        n, seqs = (h * w, t) if self.config.token_layout == "frame" else (t * h * w, 1)
        return 2 * 2 * seqs * n * n * self.config.width * len(self.blocks)

