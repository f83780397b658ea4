"""What the training loop's evaluations measure and draw on float clips, for both stages.

``psnr_per_clip`` scores float (B, C, T, H, W) tensors in [0, 1] during training; the
evaluation stage's video PSNR (uint8 frames, per-frame mean, capped) is
:func:`stcvq.evaluation.metrics.fidelity.psnr`.
"""

from __future__ import annotations

import numpy as np
import torch


def psnr_per_clip(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each (C, T, H, W) clip of a batch in [0, 1], over all its pixels; output is clamped first."""
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


__all__ = ["clip_grid", "psnr_per_clip"]
