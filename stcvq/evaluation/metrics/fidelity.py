"""Fidelity of an output video to its ground truth: PSNR, SSIM, LPIPS.

All three are computed per frame on RGB uint8 frames and averaged over frames.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity

from stcvq.evaluation.metrics.lpips import LPIPS, load_lpips
from stcvq.evaluation.metrics.result import MetricResult, check_pair
from stcvq.evaluation.metrics.weights import WeightsError

log = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0  # identical frames have infinite PSNR; JSON cannot hold inf


def psnr(output: np.ndarray, reference: np.ndarray) -> MetricResult:
    """Mean over frames of 10 log10(255^2 / MSE) on all RGB pixels; each frame capped at 100 dB."""
    check_pair(output, reference)
    diff = output.astype(np.float64) - reference.astype(np.float64)
    mse = (diff**2).reshape(diff.shape[0], -1).mean(axis=1)
    per_frame = np.where(mse > 0, 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-300)), PSNR_CAP_DB)
    per_frame = np.minimum(per_frame, PSNR_CAP_DB)
    return MetricResult(float(per_frame.mean()), details={"frames": int(len(per_frame)), "cap_db": PSNR_CAP_DB})


def ssim(output: np.ndarray, reference: np.ndarray) -> MetricResult:
    """Mean over frames of SSIM on RGB (channels averaged), with Wang et al. (2004) settings:

    11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population covariance,
    data range 255. ``skimage.metrics.structural_similarity`` with these explicit arguments.
    Frames need at least 11 pixels per side (the window).
    """
    check_pair(output, reference)
    if min(output.shape[1:3]) < 11:
        return MetricResult.missing(f"frames {output.shape[1:3]} are smaller than the 11x11 SSIM window")
    values = [
        structural_similarity(
            o, r, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, K1=0.01, K2=0.03,
        )
        for o, r in zip(output, reference)
    ]
    return MetricResult(float(np.mean(values)), details={"frames": len(values)})


def _to_lpips_input(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


@torch.inference_mode()
def lpips(
    output: np.ndarray,
    reference: np.ndarray,
    model: LPIPS | None,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    missing_reason: str = "LPIPS weights were not provided",
) -> MetricResult:
    """Mean over frames of LPIPS distance (lower is better). ``model`` None -> None with reason."""
    check_pair(output, reference)
    if model is None:
        return MetricResult.missing(missing_reason)
    device = torch.device(device)
    model = model.to(device)
    values: list[torch.Tensor] = []
    for start in range(0, len(output), batch_size):
        a = _to_lpips_input(output[start : start + batch_size], device)
        b = _to_lpips_input(reference[start : start + batch_size], device)
        values.append(model(a, b).cpu())
    per_frame = torch.cat(values).double()
    return MetricResult(float(per_frame.mean()), details={"frames": len(per_frame), "net": model.net})


def load_lpips_or_reason(weights: str | Path | list[str | Path] | None,
                         net: str = "alex") -> tuple[LPIPS | None, str | None]:
    """(model, None) when the weights load; (None, reason) when they are absent or broken."""
    if not weights:
        return None, f"LPIPS ({net}) weights were not provided (need the trunk and the lin heads)"
    try:
        return load_lpips(weights, net), None
    except WeightsError as err:
        log.warning("LPIPS unavailable: %s", err)
        return None, f"LPIPS unavailable: {err}"
