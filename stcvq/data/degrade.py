"""Degradations that turn HQ face clips into LQ training inputs, one function per task.

- ``bfvr``: blind face video restoration, the paper's Eq. 9
  ``y = {[(x * k_sigma) down_r + n_delta] ffmpeg_crf} up_r``. Unlike the reference code (docs/design.md,
  section 3.5) every parameter is drawn independently, the noise field is drawn anew for
  every frame, and the CRF really reaches a real libx264 encode. ``consistent`` mode draws one
  parameter set per clip (the paper's default); ``stochastic`` draws one per frame (Table 6).
  Each clip also gets a noise-free LQ (same draws, delta = 0) for incremental Stage II training.
- ``deflicker``: brightness flicker, ``cv2.convertScaleAbs(frame, alpha)`` on each frame with
  probability p, alpha ~ U(lo, hi).
- ``deflicker-pixel``: AI-render flicker, a fraction of frames re-rendered independently by the
  Stable Diffusion x4 upscaler (``diffusers`` backend) or by a weights-free imitation
  (``synthetic`` backend: per-frame 4x down/up with independent detail, sharpening and sub-pixel
  shift). The backend name is written into every clip's metadata.

Frames are uint8 RGB arrays (T, H, W, 3). Every random choice comes from the ``rng`` passed in,
and every drawn value is returned in a metadata dict that travels with the clip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from stcvq.config import check
from stcvq.media import resample
from stcvq.media.video import encode_decode_roundtrip
from stcvq.tasks import TASKS

log = logging.getLogger(__name__)


SYNTHETIC_BACKEND_LABEL = (
    "synthetic: weights-free imitation of per-frame re-rendering (4x down/up with independent "
    "per-frame detail, sharpening and sub-pixel shift); NOT Stable Diffusion"
)


class WeightsUnavailable(RuntimeError):
    """Model weights a backend needs cannot be loaded; the message says what to do."""


def _check_range(name: str, lo_hi: tuple[float, float], low: float, high: float | None = None) -> None:
    lo, hi = lo_hi
    check(lo <= hi, f"{name}: lower bound {lo} > upper bound {hi}")
    check(lo >= low, f"{name}: {lo} < {low}")
    if high is not None:
        check(hi <= high, f"{name}: {hi} > {high}")


@dataclasses.dataclass
class BFVRConfig:
    """Eq. 9 ranges (paper: sigma [2, 5], r [2, 4], delta [0, 5], crf [18, 25])."""

    blur_sigma: tuple[float, float] = (2.0, 5.0)  # Gaussian kernel sigma, pixels
    downscale: tuple[float, float] = (2.0, 4.0)  # r; the small side is rounded to an even size
    noise_sigma: tuple[float, float] = (0.0, 5.0)  # delta: std of Gaussian noise on the 0..255 scale
    crf: tuple[int, int] = (18, 25)  # libx264 CRF, both ends inclusive
    mode: Literal["consistent", "stochastic"] = "consistent"
    # blur_sigma is in pixels of a frame this size; None applies it as-is. The paper's ranges
    # are for 512^2 faces: with 512 here a 64^2 clip gets the same blur relative to the face.
    sigma_reference_size: int | None = None

    def __post_init__(self) -> None:
        check(self.sigma_reference_size is None or self.sigma_reference_size > 0,
              "bfvr.sigma_reference_size must be > 0 or null")
        _check_range("bfvr.blur_sigma", self.blur_sigma, 0.0)
        _check_range("bfvr.downscale", self.downscale, 1.0)
        _check_range("bfvr.noise_sigma", self.noise_sigma, 0.0)
        _check_range("bfvr.crf", self.crf, 0, 51)


@dataclasses.dataclass
class BrightnessFlickerConfig:
    probability: float = 0.3  # chance that a frame flickers
    alpha: tuple[float, float] = (0.5, 1.5)  # convertScaleAbs gain range
    # At least this many frames per clip flicker (those with the smallest draws). The paper's
    # 24-frame clips almost never draw none (0.7^24 = 0.02%); 8-frame clips do 5.7% of the time,
    # and such a clip has nothing to de-flicker. 0 = the paper's rule alone.
    min_frames: int = 1

    def __post_init__(self) -> None:
        check(0.0 <= self.probability <= 1.0, f"deflicker.probability {self.probability} not in [0, 1]")
        check(self.min_frames >= 0, f"deflicker.min_frames {self.min_frames} must be >= 0")
        _check_range("deflicker.alpha", self.alpha, 0.0)


@dataclasses.dataclass
class PixelFlickerConfig:
    backend: Literal["diffusers", "synthetic"] = "diffusers"
    fraction: float = 0.3  # share of frames re-rendered (rounded, at least one)
    scale: int = 4  # the x4 upscaler: frames go down by this factor and are rendered back up
    # diffusers backend: hub id or local folder of a StableDiffusionUpscalePipeline
    model: str = "stabilityai/stable-diffusion-x4-upscaler"
    prompt: str = "a high quality photo of a face"
    num_inference_steps: int = 20
    guidance_scale: float = 9.0
    noise_level: int = 20
    device: str = "cpu"
    # synthetic backend: per-frame draws
    detail_strength: tuple[float, float] = (3.0, 10.0)  # std of added texture, 0..255 scale
    detail_sigma: tuple[float, float] = (0.5, 1.5)  # texture grain size, pixels
    sharpen: tuple[float, float] = (0.0, 1.5)  # unsharp-mask amount
    shift: float = 0.5  # max sub-pixel shift, pixels

    def __post_init__(self) -> None:
        check(0.0 < self.fraction <= 1.0, f"deflicker-pixel.fraction {self.fraction} not in (0, 1]")
        check(self.scale >= 1, f"deflicker-pixel.scale {self.scale} < 1")
        check(self.num_inference_steps >= 1, "deflicker-pixel.num_inference_steps must be >= 1")
        _check_range("deflicker-pixel.detail_strength", self.detail_strength, 0.0)
        _check_range("deflicker-pixel.detail_sigma", self.detail_sigma, 0.0)
        _check_range("deflicker-pixel.sharpen", self.sharpen, 0.0)


@dataclasses.dataclass
class SynthesisConfig:
    """One section per task; a stage uses the one for its task."""

    bfvr: BFVRConfig = dataclasses.field(default_factory=BFVRConfig)
    deflicker: BrightnessFlickerConfig = dataclasses.field(default_factory=BrightnessFlickerConfig)
    deflicker_pixel: PixelFlickerConfig = dataclasses.field(default_factory=PixelFlickerConfig)


def clip_seed(global_seed: int, task: str, clip_id: str) -> int:
    """A 63-bit seed from (global seed, task, clip id): independent of worker scheduling."""
    digest = hashlib.sha256(f"{global_seed}:{task}:{clip_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# --------------------------------------------------------------------------- BFVR (Eq. 9)


def draw_bfvr_params(rng: np.random.Generator, cfg: BFVRConfig) -> dict[str, float | int]:
    """One independent draw of every Eq. 9 parameter."""
    return {
        "blur_sigma": float(rng.uniform(*cfg.blur_sigma)),
        "downscale": float(rng.uniform(*cfg.downscale)),
        "noise_sigma": float(rng.uniform(*cfg.noise_sigma)),
        "crf": int(rng.integers(cfg.crf[0], cfg.crf[1] + 1)),
    }


def _small_size(height: int, width: int, downscale: float) -> tuple[int, int]:
    # libx264 with yuv420p needs even sides
    def side(n: int) -> int:
        return max(2, 2 * int(round(n / downscale / 2)))

    return side(height), side(width)


def _blur_down(frame: np.ndarray, sigma: float, size_hw: tuple[int, int]) -> np.ndarray:
    """(x * k_sigma) down_r as float32."""
    kernel = 2 * math.ceil(3 * sigma) + 1
    blurred = cv2.GaussianBlur(frame.astype(np.float32), (kernel, kernel), sigma, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(blurred, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)


def _add_noise(small: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """+ n_delta, a fresh noise field per call (so per frame), quantised for the encoder."""
    noisy = small + rng.normal(0.0, sigma, small.shape).astype(np.float32) if sigma > 0 else small
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _compress_up(
    small: list[np.ndarray], crf: int, fps: float, size_hw: tuple[int, int], workdir: Path
) -> list[np.ndarray]:
    """{.}ffmpeg_crf then up_r: a real libx264 encode/decode, then resize to the HQ size."""
    decoded = encode_decode_roundtrip(small, fps, crf, workdir)
    if len(decoded) != len(small):
        raise RuntimeError(f"libx264 round trip returned {len(decoded)} frames for {len(small)}")
    height, width = size_hw
    return [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in decoded]


def bfvr_degrade(
    frames: np.ndarray, cfg: BFVRConfig, rng: np.random.Generator, fps: float = 25.0
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Eq. 9 on a clip. Returns (lq, lq_noisefree, meta).

    ``lq_noisefree`` uses the same draws with delta = 0 (incremental Stage II, step 1).
    In ``stochastic`` mode each frame has its own draws and is encoded on its own (one CRF per
    frame cannot be expressed within one x264 stream).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"bfvr_degrade: expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    num, height, width = frames.shape[:3]
    if cfg.mode == "consistent":
        per_frame = [draw_bfvr_params(rng, cfg)] * num
    else:
        per_frame = [draw_bfvr_params(rng, cfg) for _ in range(num)]

    lq, lq_clean = [], []
    with tempfile.TemporaryDirectory(prefix="stcvq-bfvr-") as tmp:
        workdir = Path(tmp)
        # consistent: one group (the whole clip, one encode); stochastic: one group per frame
        groups = [list(range(num))] if cfg.mode == "consistent" else [[i] for i in range(num)]
        sigma_scale = 1.0 if cfg.sigma_reference_size is None else min(height, width) / cfg.sigma_reference_size
        for group in groups:
            params = per_frame[group[0]]
            size = _small_size(height, width, params["downscale"])
            small = [_blur_down(frames[i], params["blur_sigma"] * sigma_scale, size) for i in group]
            noisy = [_add_noise(s, params["noise_sigma"], rng) for s in small]
            clean = [_add_noise(s, 0.0, rng) for s in small]
            lq += _compress_up(noisy, params["crf"], fps, (height, width), workdir)
            lq_clean += _compress_up(clean, params["crf"], fps, (height, width), workdir)
    sizes = [list(_small_size(height, width, p["downscale"])) for p in per_frame]
    if cfg.mode == "consistent":
        drawn: dict[str, Any] = dict(per_frame[0], small_size=sizes[0])
    else:
        drawn = {key: [p[key] for p in per_frame] for key in per_frame[0]}
        drawn["small_size"] = sizes
    meta = {
        "mode": cfg.mode,
        "params": drawn,
        "ranges": dataclasses.asdict(cfg),
        "noise": "independent Gaussian field per frame, per channel",
        "codec": "libx264 yuv420p preset medium, 1 thread, no assembly (stcvq.media.video.encode_decode_roundtrip)",
        "resize": "blur reflect border; linear down; linear up",
        "lq_noisefree": "same draws with noise_sigma = 0",
        "blur_sigma_applied_scale": sigma_scale,  # blur_sigma * this = sigma in this clip's pixels
    }
    return np.stack(lq), np.stack(lq_clean), meta


# --------------------------------------------------------------------------- brightness flicker


def brightness_flicker(
    frames: np.ndarray, cfg: BrightnessFlickerConfig, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Each frame with probability p: ``cv2.convertScaleAbs(frame, alpha=U(lo, hi))``; then, if
    fewer than ``min_frames`` frames were hit, the frames with the smallest draws are added."""
    out = np.array(frames, copy=True)
    draws = np.empty(len(out))
    gains = np.empty(len(out))
    for index in range(len(out)):  # one draw of each per frame, whatever is hit, so draws never shift
        draws[index] = rng.random()
        gains[index] = rng.uniform(*cfg.alpha)
    hit = draws < cfg.probability
    missing = min(cfg.min_frames, len(out)) - int(hit.sum())
    if missing > 0:
        order = [i for i in np.argsort(draws, kind="stable") if not hit[i]]
        hit[order[:missing]] = True
    flickered = [int(i) for i in np.flatnonzero(hit)]
    alphas = [float(gains[i]) for i in flickered]
    for index, alpha in zip(flickered, alphas):
        out[index] = cv2.convertScaleAbs(out[index], alpha=alpha, beta=0)
    meta = {"flicker_frames": flickered, "alphas": alphas, "probability": cfg.probability,
            "min_frames": cfg.min_frames, "alpha_range": list(cfg.alpha)}
    return out, meta


# --------------------------------------------------------------------------- pixel flicker


def choose_frames(num_frames: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """``round(fraction * T)`` distinct frames (at least one), sorted."""
    count = min(num_frames, max(1, int(round(fraction * num_frames))))
    return sorted(int(i) for i in rng.choice(num_frames, size=count, replace=False))


class SyntheticRerender:
    """Weights-free stand-in for per-frame SD x4 re-rendering.

    What it imitates: the upscaler sees a 4x-downsampled frame and invents detail anew for every
    frame, so re-rendered frames lose the true fine detail and gain texture, sharpness and a
    slight misalignment that differ from frame to frame. Each re-rendered frame here gets its
    own draws of all three. It is an imitation, labelled as such in every clip's metadata.
    """

    label = SYNTHETIC_BACKEND_LABEL
    name = "synthetic"

    def __init__(self, cfg: PixelFlickerConfig):
        self.cfg = cfg

    def render(self, frame: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
        cfg = self.cfg
        height, width = frame.shape[:2]
        # integer area/cubic resampling: cv2's goes through IPP, whose bytes depend on the CPU
        small = resample.resize(frame, max(1, width // cfg.scale), max(1, height // cfg.scale))
        up = resample.resize(small, width, height).astype(np.float32)
        strength = float(rng.uniform(*cfg.detail_strength))
        grain = float(rng.uniform(*cfg.detail_sigma))
        amount = float(rng.uniform(*cfg.sharpen))
        dx, dy = (float(v) for v in rng.uniform(-cfg.shift, cfg.shift, size=2))
        # invented luminance texture: band-limited noise, unit std, then scaled
        texture = rng.normal(0.0, 1.0, (height, width)).astype(np.float32)
        if grain > 0:
            texture = cv2.GaussianBlur(texture, (0, 0), grain)
        texture *= strength / max(float(texture.std()), 1e-6)
        sharp = up + amount * (up - cv2.GaussianBlur(up, (0, 0), 1.0))
        rendered = sharp + texture[..., None]
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        rendered = cv2.warpAffine(rendered, shift, (width, height), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT)
        out = np.clip(np.rint(rendered), 0, 255).astype(np.uint8)
        return out, {"detail_strength": strength, "detail_sigma": grain, "sharpen": amount, "shift": [dx, dy]}


def load_upscale_pipeline(model: str, device: str = "cpu"):
    """A ``StableDiffusionUpscalePipeline`` from a local folder or a Hugging Face hub id.

    Raises :class:`WeightsUnavailable` with what to do when the weights cannot be loaded.
    """
    try:
        from diffusers import StableDiffusionUpscalePipeline
    except ImportError as err:  # the `hub` extra is not installed
        raise WeightsUnavailable(f"pixel flicker backend 'diffusers' needs `pip install stcvq[hub]`: {err}") from None

    path = Path(model).expanduser()
    looks_local = path.is_absolute() or model.startswith(".") or path.exists()
    hint = (
        "Download the weights (e.g. `huggingface-cli download stabilityai/stable-diffusion-x4-upscaler "
        "--local-dir models/sd-x4-upscaler`) and set the pixel flicker `model` to that folder, or choose "
        "the weights-free backend (`backend: synthetic`), which is labelled as an imitation in every output."
    )
    if looks_local and not path.is_dir():
        raise WeightsUnavailable(f"Stable Diffusion x4 upscaler weights not found: {path} is not a folder. {hint}")
    try:
        pipe = StableDiffusionUpscalePipeline.from_pretrained(str(path) if looks_local else model,
                                                              local_files_only=looks_local)
    except (OSError, ValueError, EnvironmentError) as err:
        raise WeightsUnavailable(
            f"cannot load the Stable Diffusion x4 upscaler from {model!r}: {err}. {hint}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DiffusersRerender:
    """Per-frame re-rendering by ``StableDiffusionUpscalePipeline`` (the paper's pixel flicker)."""

    name = "diffusers"

    def __init__(self, cfg: PixelFlickerConfig, pipe=None):
        self.cfg = cfg
        self.pipe = pipe if pipe is not None else load_upscale_pipeline(cfg.model, cfg.device)
        self.label = f"diffusers: StableDiffusionUpscalePipeline from {cfg.model}"

    def render(self, frame: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        import torch
        from PIL import Image

        cfg = self.cfg
        height, width = frame.shape[:2]
        small_size = (max(1, width // cfg.scale), max(1, height // cfg.scale))
        small = cv2.resize(frame, small_size, interpolation=cv2.INTER_AREA)
        seed = int(rng.integers(0, 2**31 - 1))
        generator = torch.Generator(device="cpu").manual_seed(seed)
        result = self.pipe(
            prompt=cfg.prompt,
            image=Image.fromarray(small),
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            noise_level=cfg.noise_level,
            generator=generator,
            output_type="np",
        ).images[0]
        rendered = np.clip(np.rint(np.asarray(result, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
        if rendered.shape[:2] != (height, width):  # the real model returns exactly 4x; be safe
            rendered = cv2.resize(rendered, (width, height), interpolation=cv2.INTER_AREA)
        return rendered, {"generator_seed": seed}


def make_renderer(cfg: PixelFlickerConfig):
    return SyntheticRerender(cfg) if cfg.backend == "synthetic" else DiffusersRerender(cfg)


def pixel_flicker(
    frames: np.ndarray, cfg: PixelFlickerConfig, rng: np.random.Generator, renderer=None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Re-render ``fraction`` of the frames, each independently; the rest stay untouched."""
    renderer = renderer or make_renderer(cfg)
    out = np.array(frames, copy=True)
    chosen = choose_frames(len(out), cfg.fraction, rng)
    per_frame = []
    for index in chosen:
        out[index], drawn = renderer.render(out[index], rng)
        per_frame.append(drawn)
    meta = {"backend": renderer.name, "backend_label": renderer.label, "rerendered_frames": chosen,
            "per_frame": per_frame, "scale": cfg.scale}
    return out, meta


# --------------------------------------------------------------------------- one clip, one task


def synthesize_clip(
    task: str, frames: np.ndarray, cfg: SynthesisConfig, seed: int, fps: float = 25.0, renderer=None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Degrade one HQ clip for ``task``. Returns ({"lq": ..., ["lq_noisefree": ...]}, meta)."""
    rng = np.random.default_rng(seed)
    if task == "bfvr":
        lq, lq_clean, meta = bfvr_degrade(frames, cfg.bfvr, rng, fps)
        return {"lq": lq, "lq_noisefree": lq_clean}, dict(meta, backend="bfvr-eq9")
    if task == "deflicker":
        lq, meta = brightness_flicker(frames, cfg.deflicker, rng)
        return {"lq": lq}, dict(meta, backend="cv2.convertScaleAbs")
    if task == "deflicker-pixel":
        lq, meta = pixel_flicker(frames, cfg.deflicker_pixel, rng, renderer)
        return {"lq": lq}, meta
    raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
