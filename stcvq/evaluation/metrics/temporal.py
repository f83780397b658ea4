"""Temporal metrics: Flow-Score, warping error, brightness-flicker index, FVD.

Optical flow comes from a RAFT TorchScript model when its file is given, else from OpenCV's
DIS (always available); every flow-based result records ``flow_backend`` in its details.

Flow convention throughout: ``flow = estimate(a, b)`` has shape (H, W, 2) = (dx, dy) in
pixels with ``a[y, x] ~ b[y + dy, x + dx]`` (OpenCV's and RAFT's convention).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stcvq.evaluation.metrics.result import MetricResult, check_pair, check_video
from stcvq.evaluation.metrics.weights import WeightsError, is_torchscript, load_torchscript

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Brightness flicker


def mean_luma(video: np.ndarray) -> np.ndarray:
    """Per-frame mean BT.601 luma (0..255) of an RGB uint8 video: shape (T,)."""
    check_video(video)
    weights = np.array([0.299, 0.587, 0.114])
    return video.reshape(video.shape[0], -1, 3).mean(axis=1) @ weights


def flicker_index(video: np.ndarray) -> MetricResult:
    """Mean absolute frame-to-frame change of mean luma, in 8-bit levels (0 on a constant video).

    Brightness flicker (convertScaleAbs with alpha ~ U(0.5, 1.5), docs/design.md section 2) moves
    the whole frame's mean luma; real motion mostly does not, so this isolates global flicker.
    """
    check_video(video)
    if len(video) < 2:
        return MetricResult.missing("flicker index needs at least 2 frames")
    luma = mean_luma(video)
    steps = np.abs(np.diff(luma))
    return MetricResult(float(steps.mean()), details={"max_step": float(steps.max()), "frames": len(video)})


# ---------------------------------------------------------------------------------------------
# Optical flow backends


class FlowBackend(Protocol):
    name: str

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flows for frame pairs: a, b (N, H, W, 3) uint8 -> (N, H, W, 2) float32."""
        ...


class DISFlow:
    """OpenCV Dense Inverse Search on grayscale frames, MEDIUM preset (single object, reused)."""

    name = "dis"

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> None:
        self._dis = cv2.DISOpticalFlow_create(preset)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty(a.shape[:3] + (2,), np.float32)
        for i in range(len(a)):
            ga = cv2.cvtColor(np.ascontiguousarray(a[i]), cv2.COLOR_RGB2GRAY)
            gb = cv2.cvtColor(np.ascontiguousarray(b[i]), cv2.COLOR_RGB2GRAY)
            out[i] = self._dis.calc(ga, gb, None)
        return out


class RAFTFlow:
    """RAFT from either of two files (the format is detected):

    * a torchvision ``raft_large`` state dict (``raft_large_C_T_SKHT_V2-ff5fadd5.pth`` or
      ``.safetensors``), run by the plain-torch port :class:`stcvq.evaluation.metrics.raft.RAFT`;
    * a TorchScript archive whose ``forward(image1, image2)`` returns a (N, 2, H, W) flow or a
      list of them (e.g. ``torch.jit.script(torchvision...raft_large(weights=...))``).

    Both take float (N, 3, H, W) RGB in [-1, 1] with H, W multiples of 8; frames are
    edge-padded to a multiple of 8 (and to at least 64, which the correlation pyramid needs;
    torchvision recommends 128) and the flow cropped back; the last refinement is used.
    """

    name = "raft"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 4,
                 num_flow_updates: int = 12) -> None:
        self.device = torch.device(device)
        self.path = str(path)
        if not Path(path).is_file():
            raise WeightsError(f"{path}: no such RAFT weights file")
        if is_torchscript(path):
            self.format, self.model, self.call_kwargs = "torchscript", load_torchscript(path, self.device), {}
        else:
            from stcvq.evaluation.metrics.raft import load_raft

            self.format = "raft_large_state_dict"
            self.model = load_raft(path).to(self.device)
            self.call_kwargs = {"num_flow_updates": num_flow_updates}
        self.batch_size = batch_size

    @classmethod
    def from_module(cls, model: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 4,
                    **call_kwargs) -> "RAFTFlow":
        """Wrap an already built model (tests, benchmarks with random weights)."""
        self = cls.__new__(cls)
        self.device, self.path, self.format = torch.device(device), f"<{type(model).__name__}>", "module"
        self.model, self.call_kwargs, self.batch_size = model.to(self.device), call_kwargs, batch_size
        return self

    def _prep(self, frames: np.ndarray, pad_h: int, pad_w: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

    @torch.inference_mode()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h, w = a.shape[1:3]
        # multiples of 8, and at least 64: the 4-level correlation pyramid halves h/8 three times
        pad_h, pad_w = max((-h) % 8, 64 - h), max((-w) % 8, 64 - w)
        chunks = []
        for s in range(0, len(a), self.batch_size):
            first = self._prep(a[s : s + self.batch_size], pad_h, pad_w)
            second = self._prep(b[s : s + self.batch_size], pad_h, pad_w)
            out = self.model(first, second, **self.call_kwargs)
            if isinstance(out, (list, tuple)):
                out = out[-1]
            if out.ndim != 4 or out.shape[1] != 2:
                raise WeightsError(f"{self.path}: RAFT model returned shape {tuple(out.shape)}, expected (N, 2, H, W)")
            chunks.append(out[:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy())
        return np.concatenate(chunks)


def flow_backend(raft_weights: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[FlowBackend, str]:
    """RAFT when its TorchScript file loads, DIS otherwise; also returns a note saying which and why."""
    if raft_weights:
        try:
            return RAFTFlow(raft_weights, device), f"RAFT from {raft_weights}"
        except WeightsError as err:
            log.warning("RAFT unavailable, using OpenCV DIS: %s", err)
            return DISFlow(), f"OpenCV DIS (RAFT unavailable: {err})"
    return DISFlow(), "OpenCV DIS (no RAFT weights given)"


# ---------------------------------------------------------------------------------------------
# Flow-based metrics


def flow_score(video: np.ndarray, backend: FlowBackend | None = None) -> MetricResult:
    """Mean optical-flow magnitude (pixels per frame) between adjacent frames."""
    check_video(video)
    if len(video) < 2:
        return MetricResult.missing("Flow-Score needs at least 2 frames")
    backend = backend or DISFlow()
    flows = backend(video[:-1], video[1:])
    magnitude = np.linalg.norm(flows, axis=-1)
    return MetricResult(float(magnitude.mean()), details={"flow_backend": backend.name, "pairs": len(flows)})


def warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``image`` at x + flow(x) (bilinear). Returns (warped float32, inside-frame mask)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = gx + flow[..., 0], gy + flow[..., 1]
    warped = cv2.remap(image.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return warped, inside


def consistency_mask(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Non-occluded pixels of frame t by the forward-backward check (Sundaram et al. 2010,
    as used by Ruder et al. 2016 and Lai et al. 2018):
    |b + f(x + b)|^2 < 0.01 (|b|^2 + |f(x + b)|^2) + 0.5, and x + b inside the frame.

    ``backward`` = flow(t -> t-1), ``forward`` = flow(t-1 -> t).
    """
    forward_at, inside = warp(forward, backward)
    lhs = np.sum((backward + forward_at) ** 2, axis=-1)
    rhs = 0.01 * (np.sum(backward**2, axis=-1) + np.sum(forward_at**2, axis=-1)) + 0.5
    return (lhs < rhs) & inside


def warping_error(
    video: np.ndarray, flow_source: np.ndarray | None = None, backend: FlowBackend | None = None
) -> MetricResult:
    """Warping error of Lai et al. (ECCV 2018), Eq. 9: mean over t of the masked mean of
    ||V_t - warp(V_{t-1})||^2 (RGB in [0, 1], squared norm over channels).

    The flow and the occlusion mask come from ``flow_source`` (the ground truth, as in Lai et
    al., so that an output is judged against the true motion) or from ``video`` itself.
    """
    check_video(video, "video")
    source = video if flow_source is None else flow_source
    if flow_source is not None:
        check_pair(video, flow_source)
    if len(video) < 2:
        return MetricResult.missing("warping error needs at least 2 frames")
    backend = backend or DISFlow()
    backward = backend(source[1:], source[:-1])  # t -> t-1
    forward = backend(source[:-1], source[1:])  # t-1 -> t
    frames = video.astype(np.float32) / 255.0
    errors, valid_fractions = [], []
    for t in range(1, len(video)):
        b, f = backward[t - 1], forward[t - 1]
        mask = consistency_mask(b, f)
        valid_fractions.append(float(mask.mean()))
        if not mask.any():
            continue
        warped, _ = warp(frames[t - 1], b)
        sq = np.sum((frames[t] - warped) ** 2, axis=-1)
        errors.append(float(sq[mask].mean()))
    details = {
        "flow_backend": backend.name,
        "flow_from": "video" if flow_source is None else "flow_source",
        "mean_valid_fraction": float(np.mean(valid_fractions)),
        "pairs_without_valid_pixels": len(valid_fractions) - len(errors),
    }
    if not errors:
        return MetricResult.missing("no pixel passed the occlusion check in any frame pair", **details)
    return MetricResult(float(np.mean(errors)), details=details)


# ---------------------------------------------------------------------------------------------
# FVD


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2).

    tr((S1 S2)^1/2) = sum of sqrt(eig(S1^1/2 S2 S1^1/2)), a symmetric PSD matrix, so two
    symmetric eigendecompositions replace scipy's general sqrtm (no complex parts, stable
    when the covariances are singular, as they are with fewer videos than feature dims).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ddof=1) covariance of (N, D) features, as FID/FVD use."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


class I3DFeatures:
    """I3D video features, from either of two files (the format is detected):

    * a TorchScript archive: StyleGAN-V's ``i3d_torchscript.pt`` (the Kinetics-400 I3D of the
      original TF FVD, ported), called as ``model(x, rescale=False, resize=False,
      return_features=True)`` -> (N, 400); ``call_kwargs={}`` for a module taking only x;
    * a state dict for :class:`stcvq.evaluation.metrics.i3d.InceptionI3d` (pytorch-i3d's
      ``rgb_imagenet.pt``, or ``.safetensors``) -> time-averaged 400 logits.

    Both take float (N, 3, T, 224, 224) RGB in [-1, 1]; frames are resized to 224x224
    bilinearly (align_corners=False) first. One video per call (videos may differ in length).
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", call_kwargs: dict | None = None,
                 size: int = 224) -> None:
        self.device = torch.device(device)
        self.path = str(path)
        self.size = size
        if not Path(path).is_file():
            raise WeightsError(f"{path}: no such I3D weights file")
        if is_torchscript(path):
            self.format = "torchscript"
            self.model = load_torchscript(path, self.device)
            default_kwargs = dict(rescale=False, resize=False, return_features=True)
            self.call_kwargs = default_kwargs if call_kwargs is None else call_kwargs
        else:
            from stcvq.evaluation.metrics.i3d import load_i3d

            self.format = "inception_i3d_state_dict"
            self.model = load_i3d(path).to(self.device)
            self.call_kwargs = {} if call_kwargs is None else call_kwargs

    def preprocess(self, video: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (1, 3, T, size, size) float in [-1, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(video)).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x.permute(1, 0, 2, 3).unsqueeze(0)

    @torch.inference_mode()
    def __call__(self, video: np.ndarray) -> np.ndarray:
        feats = self.model(self.preprocess(video), **self.call_kwargs)
        if feats.ndim != 2 or feats.shape[0] != 1:
            raise WeightsError(f"{self.path}: I3D returned shape {tuple(feats.shape)}, expected (1, D)")
        return feats[0].double().cpu().numpy()


def load_i3d_or_reason(path: str | Path | None,
                       device: str | torch.device = "cpu") -> tuple[I3DFeatures | None, str | None]:
    if not path:
        return None, "I3D weights were not provided (StyleGAN-V i3d_torchscript.pt or pytorch-i3d rgb_imagenet.pt)"
    try:
        return I3DFeatures(path, device), None
    except WeightsError as err:
        log.warning("FVD unavailable: %s", err)
        return None, f"I3D unavailable: {err}"


def fvd(
    real_videos: Sequence[np.ndarray],
    fake_videos: Sequence[np.ndarray],
    extractor: I3DFeatures | None,
    *,
    missing_reason: str = "I3D weights were not provided",
) -> MetricResult:
    """Frechet Video Distance between two SETS of videos (one I3D feature per video).

    With fewer videos than feature dimensions the covariances are rank-deficient and FVD is
    biased upwards; ``details`` records the counts so numbers are compared at equal counts.
    """
    if extractor is None:
        return MetricResult.missing(missing_reason)
    if len(real_videos) < 2 or len(fake_videos) < 2:
        return MetricResult.missing(f"FVD needs at least 2 videos per set, got {len(real_videos)} real "
                                    f"and {len(fake_videos)} generated")
    for i, v in enumerate(real_videos):
        check_video(v, f"real video {i}")
    for i, v in enumerate(fake_videos):
        check_video(v, f"generated video {i}")
    real = np.stack([extractor(v) for v in real_videos])
    fake = np.stack([extractor(v) for v in fake_videos])
    return fvd_from_features(real, fake, i3d_format=getattr(extractor, "format", type(extractor).__name__))


def fvd_from_features(real: np.ndarray, fake: np.ndarray, **details) -> MetricResult:
    """FVD from per-video features (N, D), e.g. collected one video at a time by an evaluation
    loop so that the videos themselves never have to be in memory together."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) < 2 or len(fake) < 2:
        return MetricResult.missing(f"FVD needs at least 2 videos per set, got {len(real)} real "
                                    f"and {len(fake)} generated")
    if real.ndim != 2 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"feature shapes differ or are not (N, D): {real.shape} vs {fake.shape}")
    value = frechet_distance(*feature_statistics(real), *feature_statistics(fake))
    # rounding can take an exact 0 a hair below zero; a distance is never negative
    counts = {"real_videos": len(real), "generated_videos": len(fake), "feature_dim": int(real.shape[1])}
    return MetricResult(max(value, 0.0), details={**counts, **details})
