"""The one result type every metric returns, and the checks on video arguments.

A metric is a number or it is missing. A missing metric is ``None`` with a reason string,
never 0 and never NaN, so ``json.dumps(..., allow_nan=False)`` always works and
``dvc metrics diff`` never compares a made-up number.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """``value`` is a finite float or None; ``reason`` says why it is None.

    ``details`` holds JSON-ready facts about how the value was computed (flow backend,
    frames used, frames without a face ...).
    """

    value: float | None
    reason: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.value is None:
            if not self.reason:
                raise ValueError("a missing metric needs a reason")
        else:
            value = float(self.value)
            if not math.isfinite(value):
                raise ValueError(f"metric value must be finite, got {value}")
            object.__setattr__(self, "value", value)

    @classmethod
    def missing(cls, reason: str, **details: Any) -> "MetricResult":
        return cls(None, reason, dict(details))

    @property
    def ok(self) -> bool:
        return self.value is not None


def to_json(results: Mapping[str, MetricResult]) -> dict[str, Any]:
    """``{"values": {name: float|None}, "null_reasons": {name: str}, "details": {name: {...}}}``."""
    values = {name: r.value for name, r in results.items()}
    reasons = {name: r.reason for name, r in results.items() if r.value is None}
    details = {name: r.details for name, r in results.items() if r.details}
    return {"values": values, "null_reasons": reasons, "details": details}


def check_video(video: np.ndarray, name: str = "video", min_frames: int = 1) -> np.ndarray:
    """A video is uint8 RGB (T, H, W, 3). Raise ValueError naming ``name`` otherwise."""
    if not isinstance(video, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(video).__name__}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (T, H, W, 3), got {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {video.dtype}")
    if video.shape[0] < min_frames:
        raise ValueError(f"{name}: needs at least {min_frames} frame(s), got {video.shape[0]}")
    return video


def check_pair(output: np.ndarray, reference: np.ndarray, min_frames: int = 1) -> None:
    check_video(output, "output", min_frames)
    check_video(reference, "reference", min_frames)
    if output.shape != reference.shape:
        raise ValueError(f"output shape {output.shape} differs from reference shape {reference.shape}")
