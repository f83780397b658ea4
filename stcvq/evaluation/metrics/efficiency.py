"""Efficiency: seconds per clip and frames per second of an enhancement function, with the device."""

from __future__ import annotations

import platform
import time
from typing import Callable

import numpy as np
import torch


def device_description(device: str | torch.device = "cpu") -> str:
    """A human-readable device: the GPU name for CUDA, the CPU model and thread count otherwise."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{device.type}:{cpu} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def time_clip(
    enhance: Callable[[np.ndarray], object],
    clip: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 3,
) -> dict[str, object]:
    """Time ``enhance(clip)``: median wall seconds over ``repeats`` after ``warmup`` calls.

    Returns ``{"seconds_per_clip", "frames_per_second", "clip_frames", "seconds_per_24_frames",
    "repeats", "device"}``; ``seconds_per_24_frames`` rescales linearly when the clip is not
    24 frames long (the paper's clip length).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    device = torch.device(device)
    for _ in range(warmup):
        enhance(clip)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        enhance(clip)
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    frames = int(len(clip))
    return {
        "seconds_per_clip": seconds,
        "frames_per_second": frames / seconds if seconds > 0 else None,
        "clip_frames": frames,
        "seconds_per_24_frames": seconds * 24 / frames,
        "repeats": repeats,
        "device": device_description(device),
    }
