"""Video frames as arrays and as model tensors.

Decoders and the metrics use (T, H, W, 3) uint8 RGB frames; the models take (3, T, H, W)
float32 clips in [0, 1]. These two functions are the only crossings between the layouts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def frames_to_tensor(frames: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames (an array or a sequence of (H, W, 3) frames) -> (3, T, H, W)
    float32 in [0, 1]: a channels-first view of a frames-last float copy."""
    array = np.ascontiguousarray(np.stack(frames) if not isinstance(frames, np.ndarray) else frames)
    return torch.from_numpy(array).permute(3, 0, 1, 2).float().div_(255.0)


def to_uint8_video(clip: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, T, H, W) float in [0, 1] -> (T, H, W, 3) uint8 RGB, the metrics' video layout."""
    clip = torch.as_tensor(clip).detach().float().cpu()
    if clip.ndim != 4 or clip.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) clip, got shape {tuple(clip.shape)}")
    return (clip.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()
