"""Device and precision helpers shared by training, inference and benchmarks."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "float32", "bf16", "fp16")


def autocast(device: torch.device | str, precision: str):
    """The autocast context of ``precision``: fp32/float32 none, bf16/fp16 that dtype on any
    device, auto bf16 on CUDA and none elsewhere (CPU float32 is the bitwise-reproducible path)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision in ("fp32", "float32") or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def no_autocast(device: torch.device):
    """A context that runs its body in float32 even inside an autocast region."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # meta tensors (FLOP counting) have no autocast


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the module itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
