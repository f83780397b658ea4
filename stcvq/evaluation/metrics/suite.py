"""Every per-video metric in one call, the optional models loaded once, and the means over a
test set: what an evaluation stage needs (it stays a thin script).

    models = load_models(lpips_weights=..., raft_weights=..., arcface_weights=..., i3d_weights=...)
    per_video = [video_metrics(out, gt, models) for out, gt in pairs]
    summary = aggregate(per_video)               # {name: MetricResult}
    fvd_acc = FVDAccumulator(models); fvd_acc.add(gt, out) ...; summary["fvd"] = fvd_acc.result()
    to_json(summary)                             # values + null_reasons + details
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from stcvq.evaluation.metrics.fidelity import load_lpips_or_reason, lpips, psnr, ssim
from stcvq.evaluation.metrics.identity import Embedder, embedder, identity_metrics
from stcvq.evaluation.metrics.lpips import LPIPS
from stcvq.evaluation.metrics.result import MetricResult, check_pair
from stcvq.evaluation.metrics.temporal import (
    FlowBackend,
    I3DFeatures,
    flicker_index,
    flow_backend,
    flow_score,
    fvd_from_features,
    load_i3d_or_reason,
    warping_error,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class MetricModels:
    """The optional networks, each with a note saying what was loaded or why not."""

    lpips: LPIPS | None
    lpips_reason: str | None
    flow: FlowBackend
    flow_note: str
    embed: Embedder
    embed_note: str
    i3d: I3DFeatures | None
    i3d_reason: str | None
    device: str

    def notes(self) -> dict[str, str]:
        return {
            "lpips": self.lpips_reason or f"LPIPS ({self.lpips.net}) loaded",
            "flow": self.flow_note,
            "face_descriptor": self.embed_note,
            "fvd": self.i3d_reason or f"I3D loaded ({self.i3d.format})",
        }


def load_models(
    *,
    lpips_weights: str | Path | Sequence[str | Path] | None = None,
    lpips_net: str = "alex",
    raft_weights: str | Path | None = None,
    arcface_weights: str | Path | None = None,
    i3d_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> MetricModels:
    if isinstance(lpips_weights, (list, tuple)):
        lpips_weights = list(lpips_weights)
    lpips_model, lpips_reason = load_lpips_or_reason(lpips_weights, lpips_net)
    flow, flow_note = flow_backend(raft_weights, device)
    embed, embed_note = embedder(arcface_weights)
    i3d, i3d_reason = load_i3d_or_reason(i3d_weights, device)
    models = MetricModels(lpips_model, lpips_reason, flow, flow_note, embed, embed_note, i3d, i3d_reason, str(device))
    for name, note in models.notes().items():
        log.info("metrics %s: %s", name, note)
    return models


def video_metrics(output: np.ndarray, reference: np.ndarray, models: MetricModels, *,
                  faces: bool = True) -> dict[str, MetricResult]:
    """psnr, ssim, lpips, flow_score, warping_error (flow from the ground truth), flicker_index,
    and with ``faces`` akd, ids, face_cons, for one output against its ground truth.
    Score the degraded input the same way by passing it as ``output``."""
    check_pair(output, reference)
    results = {
        "psnr": psnr(output, reference),
        "ssim": ssim(output, reference),
        "lpips": lpips(output, reference, models.lpips, device=models.device, missing_reason=models.lpips_reason or ""),
        "flow_score": flow_score(output, models.flow),
        "warping_error": warping_error(output, flow_source=reference, backend=models.flow),
        "flicker_index": flicker_index(output),
    }
    if faces:
        results.update(identity_metrics(output, reference, models.embed))
    return results


def aggregate(per_video: Sequence[dict[str, MetricResult]]) -> dict[str, MetricResult]:
    """Mean of each metric over the videos that have it; None (with the first video's reason)
    when no video has it. ``details`` count the videos used and missing."""
    names: list[str] = []
    for results in per_video:
        names += [n for n in results if n not in names]
    summary = {}
    for name in names:
        present = [r[name] for r in per_video if name in r and r[name].value is not None]
        missing = [r[name] for r in per_video if name in r and r[name].value is None]
        details: dict[str, Any] = {"videos": len(present), "videos_missing": len(missing)}
        backends = sorted({str(r.details[k]) for r in present for k in ("flow_backend", "descriptor")
                           if k in r.details})
        if backends:
            details["backend"] = ",".join(backends)
        if present:
            summary[name] = MetricResult(float(np.mean([r.value for r in present])), details=details)
        else:
            reason = missing[0].reason if missing else "no video was scored"
            summary[name] = MetricResult.missing(f"no video has {name}: {reason}", **details)
    return summary


class FVDAccumulator:
    """Collects one I3D feature per real and per generated video, then gives FVD over the set."""

    def __init__(self, models: MetricModels) -> None:
        self.extractor, self.reason = models.i3d, models.i3d_reason
        self.real: list[np.ndarray] = []
        self.fake: list[np.ndarray] = []

    def add(self, real: np.ndarray, fake: np.ndarray) -> None:
        if self.extractor is not None:
            self.real.append(self.extractor(real))
            self.fake.append(self.extractor(fake))

    def result(self) -> MetricResult:
        if self.extractor is None:
            return MetricResult.missing(self.reason or "I3D weights were not provided")
        return fvd_from_features(np.array(self.real), np.array(self.fake), i3d_format=self.extractor.format)
