"""What autograd keeps for the backward pass, as the checkpointing tests measure it."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def with_saved_bytes(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()`` and the bytes of the tensors autograd saved for backward while it ran."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, total
