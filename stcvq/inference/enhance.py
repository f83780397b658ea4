"""Streaming video enhancement for any length and any resolution.

Frames stream through the model in overlapping windows of the model's clip length. Each
window's output is blended into the frames it covers with weights that ramp up over the
overlap at its start and down over the overlap at its end, then normalised, so there is no
hard seam between windows and memory holds at most one window plus its overlap, whatever the
video's length. Outputs are clamped to [0, 1], never min-max renormalised (which would shift
brightness clip by clip, one of the reference code's faults).

Two framings map a video frame to the model's square input and back:

* whole-frame: reflect-pad the frame to a square (keeps the aspect ratio), resize to the
  model size, and invert both steps on the way back;
* face-crop: one stable square face box for the whole video, found exactly as the pipeline's
  ``crop`` stage finds the training crops (dlib on sampled frames, the dominant face track,
  enlarged x1.3); the crop is enhanced and pasted back with a feathered mask.

The models are trained on face crops, so a scene with a small face needs face-crop, while a
video that already is a face crop needs whole-frame. ``framing="auto"`` (the default) picks
face-crop when a face is found and its square covers less than ``face_max_fraction`` of the
frame, whole-frame otherwise, and logs which and why.

The model is anything with ``clip_length``, ``size`` and ``restore(clips)`` (see
:class:`ClipRestorer`), so this module does not depend on how Stage II is built.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Protocol

import cv2
import numpy as np
import torch
from tqdm import tqdm

from stcvq.config import check
from stcvq.media import video
from stcvq.media.frames import frames_to_tensor
from stcvq.nn.runtime import autocast

log = logging.getLogger(__name__)


class ClipRestorer(Protocol):
    clip_length: int  # frames per window
    size: int  # side of the square model input

    def restore(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, size, size) in [0, 1] -> the same shape, restored."""


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    overlap: int = 4  # frames shared by consecutive windows, blended across the seam
    batch_size: int = 1  # windows per model call
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bf16 | fp16 (autocast)
    crf: int = 15  # x264 quality of the written output
    framing: Literal["auto", "face", "whole"] = "auto"  # face-crop, whole-frame, or chosen per video
    face_enlarge: float = 1.3  # face square side / face track box side (the crop stage's)
    face_max_fraction: float = 0.5  # auto: face-crop only when the face square covers less of the frame
    feather: float = 0.1  # feathered border of the pasted crop, as a fraction of its side

    def __post_init__(self):
        check(self.overlap >= 0, f"overlap must be >= 0, got {self.overlap}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.dtype in ("float32", "bf16", "fp16"), f"dtype must be float32, bf16 or fp16, got {self.dtype}")
        check(0 <= self.crf <= 51, f"crf must be in 0..51 (x264), got {self.crf}")
        check(self.framing in ("auto", "face", "whole"), f"framing must be auto, face or whole, got {self.framing!r}")
        check(self.face_enlarge >= 1.0, f"face_enlarge must be >= 1, got {self.face_enlarge}")
        check(0 < self.face_max_fraction <= 1, f"face_max_fraction must be in (0, 1], got {self.face_max_fraction}")
        check(0 <= self.feather < 0.5, f"feather must be in [0, 0.5), got {self.feather}")


# ---------------------------------------------------------------------------------------
# Framing: video frame <-> square model input


class WholeFrame:
    """Reflect-pad to a square, resize to the model size; the inverse crops the padding off."""

    def __init__(self, height: int, width: int, size: int):
        self.height, self.width, self.size = height, width, size
        side = max(height, width)
        self.pad_top = (side - height) // 2
        self.pad_left = (side - width) // 2
        self.side = side

    def to_model(self, frame: np.ndarray) -> np.ndarray:
        h, w = self.height, self.width
        padded = cv2.copyMakeBorder(
            frame, self.pad_top, self.side - h - self.pad_top, self.pad_left, self.side - w - self.pad_left,
            cv2.BORDER_REFLECT_101,
        )
        interp = cv2.INTER_AREA if self.side > self.size else cv2.INTER_CUBIC
        return cv2.resize(padded, (self.size, self.size), interpolation=interp)

    def from_model(self, restored: np.ndarray, original: np.ndarray) -> np.ndarray:
        interp = cv2.INTER_AREA if self.size > self.side else cv2.INTER_CUBIC
        full = cv2.resize(restored, (self.side, self.side), interpolation=interp)
        return full[self.pad_top : self.pad_top + self.height, self.pad_left : self.pad_left + self.width]


class FaceCrop:
    """A fixed square box (x0, y0, side) inside the frame, pasted back with a feathered mask."""

    def __init__(self, box: tuple[int, int, int], size: int, feather: float):
        self.x0, self.y0, self.side = box
        self.size = size
        ramp = max(1, int(round(feather * self.side)))
        profile = np.minimum(np.arange(self.side) + 1, np.arange(self.side)[::-1] + 1) / ramp
        profile = np.clip(profile, 0.0, 1.0).astype(np.float32)
        self.mask = (profile[:, None] * profile[None, :])[..., None]

    def to_model(self, frame: np.ndarray) -> np.ndarray:
        crop = frame[self.y0 : self.y0 + self.side, self.x0 : self.x0 + self.side]
        interp = cv2.INTER_AREA if self.side > self.size else cv2.INTER_CUBIC
        return cv2.resize(crop, (self.size, self.size), interpolation=interp)

    def from_model(self, restored: np.ndarray, original: np.ndarray) -> np.ndarray:
        interp = cv2.INTER_AREA if self.size > self.side else cv2.INTER_CUBIC
        crop = cv2.resize(restored, (self.side, self.side), interpolation=interp).astype(np.float32)
        out = original.astype(np.float32)
        region = out[self.y0 : self.y0 + self.side, self.x0 : self.x0 + self.side]
        out[self.y0 : self.y0 + self.side, self.x0 : self.x0 + self.side] = self.mask * crop + (1 - self.mask) * region
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class FaceSearch:
    box: tuple[int, int, int] | None  # (x0, y0, side) of the stable face square; None: no face
    face_frames: int  # sampled frames on the face track
    sampled_frames: int


def find_face_square(path: Path, info: video.VideoInfo, enlarge: float) -> FaceSearch:
    """The square the pipeline's crop stage would cut from this video (its default settings):
    the dominant face track on evenly sampled frames, enlarged and kept inside the frame. No
    face when the track covers fewer sampled frames than the crop stage requires."""
    from stcvq.data.curate.crop import CropConfig, crop_box_from_track, detect_in_frame, face_track

    config = CropConfig(enlarge=enlarge)
    indices, frames = video.read_sampled(path, config.sample_frames, info.num_frames)
    track = face_track([(i, detect_in_frame(f, config)) for i, f in zip(indices, frames)], config.max_track_jump)
    if not track or len(track) < config.min_face_frames * len(indices):
        return FaceSearch(None, len(track), len(indices))
    _, (x0, y0, x1, _) = crop_box_from_track([b for _, b in track], info.width, info.height, enlarge)
    return FaceSearch((x0, y0, x1 - x0), len(track), len(indices))


def choose_framing(path: Path, info: video.VideoInfo, size: int,
                   config: StreamConfig) -> tuple[WholeFrame | FaceCrop, str]:
    """The framing of ``path`` under ``config.framing``, and why, in words for the log."""
    if config.framing == "whole":
        return WholeFrame(info.height, info.width, size), "whole-frame (asked)"
    search = find_face_square(path, info, config.face_enlarge)
    found = f"a face on {search.face_frames} of {search.sampled_frames} sampled frames"
    if search.box is None:
        if config.framing == "face":
            raise video.VideoError(f"{path}: face-crop found no face track ({found})")
        return WholeFrame(info.height, info.width, size), f"whole-frame (auto: no face track, {found})"
    x0, y0, side = search.box
    where = f"{side} px square at ({x0}, {y0}) covers {side * side / (info.width * info.height):.0%} of the frame"
    if config.framing == "face":
        return FaceCrop(search.box, size, config.feather), f"face-crop (asked): {found}, {where}"
    if side * side >= config.face_max_fraction * info.width * info.height:
        return WholeFrame(info.height, info.width, size), (
            f"whole-frame (auto: {found}, but its {where}, at least {config.face_max_fraction:.0%}: "
            "already a face crop)")
    return FaceCrop(search.box, size, config.feather), f"face-crop (auto: {found}, its {where})"


# ---------------------------------------------------------------------------------------
# Windows and blending


def window_weights(length: int, overlap: int, first_pending: int, blend_start: bool) -> np.ndarray:
    """Blend weight of each frame of a window.

    Frames before ``first_pending`` are already written and get weight 0. With
    ``blend_start`` the weight ramps up over ``overlap`` frames from ``first_pending``, where
    an earlier window's ramp-down covers the same frames; every window ramps down over its
    last ``overlap`` frames. Consecutive ramps sum to one across a seam, and normalising by
    the accumulated weight makes a ramp-down with no successor harmless.
    """
    idx = np.arange(length, dtype=np.float64)
    down = np.minimum(1.0, (length - idx) / (overlap + 1))
    up = np.minimum(1.0, (idx - first_pending + 1) / (overlap + 1)) if blend_start else 1.0
    return np.where(idx < first_pending, 0.0, up * down).astype(np.float32)




@dataclasses.dataclass
class _Window:
    start: int  # first frame index
    frames: list[np.ndarray]  # model-framed inputs (padded to clip length if the video is shorter)
    valid: int  # real frames in it
    first_pending: int  # offset of the first not-yet-written frame


def restore_stream(
    frames: Iterable[np.ndarray],
    model: ClipRestorer,
    to_model: Callable[[np.ndarray], np.ndarray],
    from_model: Callable[[np.ndarray, np.ndarray], np.ndarray],
    config: StreamConfig = StreamConfig(),
) -> Iterator[np.ndarray]:
    """Yield restored frames, one per input frame, in order, with bounded memory."""
    length = model.clip_length
    overlap = min(config.overlap, length - 1)
    stride = length - overlap
    device = torch.device(config.device)

    recent: collections.deque[tuple[int, np.ndarray, np.ndarray]] = collections.deque(maxlen=length)
    accum: dict[int, tuple[np.ndarray, float]] = {}  # frame index -> (weighted sum, weight sum)
    originals: dict[int, np.ndarray] = {}
    queue: list[_Window] = []
    next_emit = 0  # every frame before it has been yielded
    next_start = 0  # start of the next regular window

    def run(windows: list[_Window]) -> None:
        batch = torch.stack([frames_to_tensor(w.frames) for w in windows]).to(device)
        with torch.inference_mode(), autocast(device, config.dtype):
            out = model.restore(batch).float().clamp(0, 1)  # clamp, never min-max renormalise
        out = out.permute(0, 2, 3, 4, 1).cpu().numpy()  # (B, T, H, W, 3)
        for window, restored in zip(windows, out):
            blend_start = window.start > 0 or window.first_pending > 0
            weights = window_weights(length, overlap, window.first_pending, blend_start)
            for offset in range(window.first_pending, window.valid):
                index = window.start + offset
                total, weight = accum.get(index, (0.0, 0.0))
                accum[index] = (total + weights[offset] * restored[offset], weight + float(weights[offset]))

    def emit(until: int) -> Iterator[np.ndarray]:
        nonlocal next_emit
        while next_emit < until:
            total, weight = accum.pop(next_emit)
            restored = np.clip(np.rint(total / weight * 255.0), 0, 255).astype(np.uint8)
            yield from_model(restored, originals.pop(next_emit))
            next_emit += 1

    def flush() -> Iterator[np.ndarray]:
        if queue:
            run(queue)
            # A frame is final once no later window can cover it: before the next start.
            final_until = min(next_start, max(w.start + w.valid for w in queue))
            queue.clear()
            yield from emit(final_until)

    count = 0
    for index, frame in enumerate(frames):
        originals[index] = frame
        recent.append((index, frame, to_model(frame)))
        count = index + 1
        if count == next_start + length:
            window_frames = [m for _, _, m in recent]
            queue.append(_Window(next_start, window_frames, length, max(0, next_emit - next_start)))
            next_start += stride
            if len(queue) == config.batch_size:
                yield from flush()
    yield from flush()
    if next_emit < count:  # the tail: a last window ending at the last frame
        start = max(0, count - length)
        tail = [m for i, _, m in recent if i >= start]
        valid = len(tail)
        tail = tail + [tail[-1]] * (length - valid)  # a video shorter than one window
        next_start = count
        queue.append(_Window(start, tail, valid, next_emit - start))
        yield from flush()
    assert not accum and not originals, "every frame is written exactly once"


# ---------------------------------------------------------------------------------------
# Files


def output_pix_fmt(info: video.VideoInfo) -> str:
    """Keep the input's pixel format where x264 can; 4:2:0 needs even sides, else 4:4:4."""
    if info.pix_fmt in ("yuv420p", "yuv422p", "yuv444p") and not (
        info.pix_fmt != "yuv444p" and (info.width % 2 or info.height % 2)
    ):
        return info.pix_fmt
    if info.width % 2 or info.height % 2:
        return "yuv444p"
    return "yuv420p"


@dataclasses.dataclass
class EnhanceReport:
    input: str
    output: str
    frames: int
    seconds: float
    frames_per_second: float
    fps: str
    width: int
    height: int
    audio: bool
    framing: str  # "face" or "whole": what ran
    framing_reason: str
    face_square: tuple[int, int, int] | None  # (x0, y0, side) enhanced and pasted back, for face-crop
    timing: str  # "constant" (frame i at i / fps) or "variable" (each input timestamp kept)


def enhance_file(
    src: str | Path,
    dst: str | Path,
    model: ClipRestorer,
    config: StreamConfig = StreamConfig(),
    *,
    force: bool = False,
    progress: bool = True,
) -> EnhanceReport:
    """Enhance one video file into ``dst`` (written atomically), keeping frame count, timing,
    size and audio."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: output would overwrite its own input")
    if dst.exists() and not force:
        raise FileExistsError(f"{dst}: exists; pass --force to overwrite")
    info = video.probe(src)
    framing, reason = choose_framing(src, info, model.size, config)
    log.info("%s: %s", src, reason)
    # Timing: a variable-rate input keeps every frame's own timestamp rather than being made
    # constant-rate at its average rate, because duplicating or dropping frames to hit a
    # constant rate would change the frame count and put repeated frames through the
    # temporal model; kept timestamps keep the copied audio in sync as well. A constant-rate
    # input is written at the rate its timestamps show: the container's average rate can be
    # off, e.g. after frames were selected with -fps_mode vfr.
    times = video.frame_times(src)
    rate = times.regular_rate(Fraction(info.fps_fraction) or None) if times is not None else None
    variable = times is not None and rate is None and len(times.pts) > 1
    started = time.perf_counter()
    bar = tqdm(total=info.num_frames or None, unit="frame", desc=src.name, disable=not progress)
    written_frames = 0

    def frames_with_progress() -> Iterator[np.ndarray]:
        nonlocal written_frames
        for frame in restore_stream(video.read_frames(src), model, framing.to_model, framing.from_model, config):
            written_frames += 1
            bar.update(1)
            yield frame

    try:
        video.write_video(
            dst, frames_with_progress(), rate or info.fps_fraction, crf=config.crf, pix_fmt=output_pix_fmt(info),
            audio_from=src, times=times if variable else None,
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    written = video.probe(dst)
    fps = written_frames / max(seconds, 1e-9)
    log.info("%s -> %s: %d frames in %.1f s (%.2f frames/s)", src, dst, written_frames, seconds, fps)
    return EnhanceReport(
        input=str(src), output=str(dst), frames=written_frames, seconds=seconds, frames_per_second=fps,
        fps=written.fps_fraction, width=written.width, height=written.height, audio=written.has_audio,
        framing="face" if isinstance(framing, FaceCrop) else "whole", framing_reason=reason,
        face_square=(framing.x0, framing.y0, framing.side) if isinstance(framing, FaceCrop) else None,
        timing="variable" if variable else "constant",
    )
