"""Streaming video enhancement for any length and any resolution, shot by shot and face by face.

Frames stream through the model in overlapping windows of the model's clip length. Each
window's output is blended into the frames it covers with weights that ramp up over the
overlap at its start and down over the overlap at its end, then normalised, so there is no
hard seam between windows and memory holds at most one window plus its overlap, whatever the
video's length. Outputs are clamped to [0, 1], never min-max renormalised (which would shift
brightness clip by clip, one of the reference code's faults).

Nothing runs across a shot cut: the shots come first (:mod:`stcvq.faces.shots`), and every
stream of windows, with its cross-fades and temporal context, starts afresh at each cut.

Three framings map video frames to the model's square input and back:

* tracks: every face track (:mod:`stcvq.faces.tracks`, found in a first pass that keeps boxes
  only) is one stream of its smoothed square crops, resized to the model size, restored in
  windows inside its shot and pasted back with a feathered mask; where faces overlap, their
  restorations blend by their masks. Pixels outside every square are the input's, untouched,
  and frames without a face skip the model;
* face-crop: one fixed square for the whole video, the box around the longest track's squares;
* whole-frame: reflect-pad the frame to a square (keeps the aspect ratio), resize to the
  model size, and invert both steps on the way back.

The models are trained on face crops, so a scene needs tracks, while a video that already is
a face crop needs whole-frame. ``framing="auto"`` (the default) picks whole-frame when no face
is found or when one face at a time fills the frame (its square covers at least
``face_max_fraction`` of it on most frames), tracks otherwise, and logs which and why.

Two strength knobs: ``fidelity`` blends the model's looked-up codes with its LQ encoder's own
latent before decoding (a model property, see ``Stage2Model.restore``), ``blend_input``
mixes the output frames with the input frames.

The model is anything with ``clip_length``, ``size`` and ``restore(clips)`` (see
:class:`ClipRestorer`), so this module does not depend on how Stage II is built.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterable, Iterator, Literal, Protocol, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from stcvq.config import check
from stcvq.media import video
from stcvq.media.frames import frames_to_tensor
from stcvq.nn.runtime import autocast

if TYPE_CHECKING:
    from stcvq.faces.shots import Shot, ShotConfig
    from stcvq.faces.tracks import FaceTrack, TrackConfig

log = logging.getLogger(__name__)

Framing = Literal["auto", "tracks", "face", "whole"]


class ClipRestorer(Protocol):
    clip_length: int  # frames per window
    size: int  # side of the square model input

    def restore(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, size, size) in [0, 1] -> the same shape, restored. A model with a strength
        knob also takes ``restore(clips, fidelity=w)``, w in (0, 1] (``Stage2Model`` does)."""


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    overlap: int = 4  # frames shared by consecutive windows, blended across the seam
    batch_size: int = 1  # windows per model call
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bf16 | fp16 (autocast)
    crf: int = 15  # x264 quality of the written output
    framing: Framing = "auto"  # face tracks, one face-crop square, whole-frame, or chosen per video
    # auto: whole-frame when one face at a time covers this much of the frame on most frames (a face
    # crop; a close-up in a wider frame, e.g. carphone x3 in 352x288, covers about 42%)
    face_max_fraction: float = 0.5
    feather: float = 0.1  # feathered border of a pasted square, as a fraction of its side
    fidelity: float = 0.0  # 0: the looked-up codes; 1: the LQ encoder's own latent (Stage2Model.restore)
    blend_input: float = 0.0  # share of the input frame in the output frame
    shots: ShotConfig | None = None  # None: stcvq.faces.shots' defaults
    tracks: TrackConfig | None = None  # None: stcvq.faces.tracks' defaults (min_face, max_faces, ...)

    def __post_init__(self):
        check(self.overlap >= 0, f"overlap must be >= 0, got {self.overlap}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.dtype in ("float32", "bf16", "fp16"), f"dtype must be float32, bf16 or fp16, got {self.dtype}")
        check(0 <= self.crf <= 51, f"crf must be in 0..51 (x264), got {self.crf}")
        check(self.framing in ("auto", "tracks", "face", "whole"),
              f"framing must be auto, tracks, face or whole, got {self.framing!r}")
        check(0 < self.face_max_fraction <= 1, f"face_max_fraction must be in (0, 1], got {self.face_max_fraction}")
        check(0 <= self.feather < 0.5, f"feather must be in [0, 0.5), got {self.feather}")
        check(0 <= self.fidelity <= 1, f"fidelity must be in 0..1, got {self.fidelity}")
        check(0 <= self.blend_input <= 1, f"blend_input must be in 0..1, got {self.blend_input}")

    def shot_config(self) -> ShotConfig:
        from stcvq.faces.shots import ShotConfig

        return self.shots or ShotConfig()

    def track_config(self) -> TrackConfig:
        from stcvq.faces.tracks import TrackConfig

        return self.tracks or TrackConfig()


# ---------------------------------------------------------------------------------------
# Framing: video frame <-> square model input


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    interp = cv2.INTER_AREA if image.shape[0] > side else cv2.INTER_CUBIC
    return cv2.resize(image, (side, side), interpolation=interp)


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
        return _resize(padded, self.size)

    def from_model(self, restored: np.ndarray, original: np.ndarray) -> np.ndarray:
        full = _resize(restored, self.side)
        return full[self.pad_top : self.pad_top + self.height, self.pad_left : self.pad_left + self.width]


def feather_mask(side: int, feather: float) -> np.ndarray:
    """(side, side, 1) float32 weights: 1 inside, ramping linearly to about 0 over the border
    of ``feather * side`` pixels, so a pasted square leaves no seam."""
    ramp = max(1, int(round(feather * side)))
    profile = np.minimum(np.arange(side) + 1, np.arange(side)[::-1] + 1) / ramp
    profile = np.clip(profile, 0.0, 1.0).astype(np.float32)
    return (profile[:, None] * profile[None, :])[..., None]


def paste_squares(frame: np.ndarray, pieces: Sequence[tuple[tuple[int, int, int], np.ndarray]],
                  feather: float) -> np.ndarray:
    """``frame`` with each restored square ``(x0, y0, side), crop`` (crop at any size) pasted
    back with a feathered mask. Overlapping squares blend by their masks: the colour is their
    mask-weighted mean and its share ``1 - prod(1 - mask)``, which is one square's mask where
    only one covers a pixel. Pixels outside every square are returned unchanged; a square may
    reach past the frame (its outside part is dropped)."""
    height, width = frame.shape[:2]
    clipped = []
    for (x0, y0, side), crop in pieces:
        fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
        if fx0 < fx1 and fy0 < fy1:
            clipped.append(((x0, y0, side), (fx0, fy0, fx1, fy1), crop))
    if not clipped:
        return frame
    bx0, by0 = min(c[1][0] for c in clipped), min(c[1][1] for c in clipped)
    bx1, by1 = max(c[1][2] for c in clipped), max(c[1][3] for c in clipped)
    shape = (by1 - by0, bx1 - bx0)
    colour = np.zeros((*shape, 3), np.float32)
    weight = np.zeros((*shape, 1), np.float32)
    keep = np.ones((*shape, 1), np.float32)
    for (x0, y0, side), (fx0, fy0, fx1, fy1), crop in clipped:
        mask = feather_mask(side, feather)[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
        restored = _resize(crop, side)[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0].astype(np.float32)
        region = (slice(fy0 - by0, fy1 - by0), slice(fx0 - bx0, fx1 - bx0))
        colour[region] += mask * restored
        weight[region] += mask
        keep[region] *= 1 - mask
    original = frame[by0:by1, bx0:bx1].astype(np.float32)
    mean = np.divide(colour, weight, out=original.copy(), where=weight > 0)
    out = frame.copy()
    out[by0:by1, bx0:bx1] = np.clip(np.rint((1 - keep) * mean + keep * original), 0, 255).astype(np.uint8)
    return out


class FaceCrop:
    """A fixed square box (x0, y0, side) inside the frame, pasted back with a feathered mask."""

    def __init__(self, box: tuple[int, int, int], size: int, feather: float):
        self.x0, self.y0, self.side = box
        self.size, self.feather = size, feather

    def to_model(self, frame: np.ndarray) -> np.ndarray:
        return _resize(frame[self.y0 : self.y0 + self.side, self.x0 : self.x0 + self.side], self.size)

    def from_model(self, restored: np.ndarray, original: np.ndarray) -> np.ndarray:
        return paste_squares(original, [((self.x0, self.y0, self.side), restored)], self.feather)


def fixed_square(track: FaceTrack, width: int, height: int) -> tuple[int, int, int]:
    """The square (x0, y0, side) around every square of ``track`` (each clipped to the frame),
    shifted into the frame and shrunk to fit it if needed: one box that holds the face all along."""
    from stcvq.faces.tracks import fit_square

    x0, y0, side = track.squares[:, 0], track.squares[:, 1], track.squares[:, 2]
    fx0, fy0 = max(int(x0.min()), 0), max(int(y0.min()), 0)
    fx1, fy1 = min(int((x0 + side).max()), width), min(int((y0 + side).max()), height)
    square = max(fx1 - fx0, fy1 - fy0)
    return fit_square(round((fx0 + fx1 - square) / 2), round((fy0 + fy1 - square) / 2), square, width, height)


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
    frames: list[np.ndarray]  # model-framed inputs (padded to clip length if the stream is shorter)
    valid: int  # real frames in it
    first_pending: int  # offset of the first not-yet-final frame


def restores_with_fidelity(model: ClipRestorer) -> bool:
    """Whether ``model.restore`` takes a ``fidelity`` argument."""
    return "fidelity" in inspect.signature(model.restore).parameters


class WindowStream:
    """One stream of model-framed frames (a shot, or a face track inside one), restored in
    overlapping windows that never reach past the stream.

    :meth:`push` takes the next frame and returns the restored frames that became final,
    as ``(index, uint8 model-size frame)`` in order; :meth:`close` returns the rest. Memory
    holds at most ``batch_size`` windows plus the overlap. ``windows`` lists the frame ranges
    ``[start, end)`` of the windows run, in the indices of the video (``first`` onwards)."""

    def __init__(self, model: ClipRestorer, config: StreamConfig, first: int = 0):
        self.model, self.config, self.first = model, config, first
        self.length = model.clip_length
        self.overlap = min(config.overlap, self.length - 1)
        self.stride = self.length - self.overlap
        self.device = torch.device(config.device)
        self.recent: collections.deque[tuple[int, np.ndarray]] = collections.deque(maxlen=self.length)
        self.accum: dict[int, tuple[np.ndarray, float]] = {}  # frame index -> (weighted sum, weight sum)
        self.queue: list[_Window] = []
        self.next_emit = first  # every frame before it has been returned
        self.next_start = first  # start of the next regular window
        self.count = first  # frames pushed, as the next index
        self.windows: list[tuple[int, int]] = []
        self.restore_kwargs = {"fidelity": config.fidelity} if config.fidelity > 0 else {}

    def push(self, model_frame: np.ndarray) -> list[tuple[int, np.ndarray]]:
        self.recent.append((self.count, model_frame))
        self.count += 1
        if self.count == self.next_start + self.length:
            frames = [m for _, m in self.recent]
            self.queue.append(_Window(self.next_start, frames, self.length, max(0, self.next_emit - self.next_start)))
            self.next_start += self.stride
            if len(self.queue) == self.config.batch_size:
                return self._flush()
        return []

    def close(self) -> list[tuple[int, np.ndarray]]:
        out = self._flush()
        if self.next_emit < self.count:  # the tail: a last window ending at the last frame
            start = max(self.first, self.count - self.length)
            tail = [m for i, m in self.recent if i >= start]
            valid = len(tail)
            tail = tail + [tail[-1]] * (self.length - valid)  # a stream shorter than one window
            self.next_start = self.count
            self.queue.append(_Window(start, tail, valid, self.next_emit - start))
            out += self._flush()
        assert not self.accum and self.next_emit == self.count, "every frame is returned exactly once"
        self.recent.clear()
        return out

    def _flush(self) -> list[tuple[int, np.ndarray]]:
        if not self.queue:
            return []
        self._run(self.queue)
        # A frame is final once no later window can cover it: before the next start.
        final_until = min(self.next_start, max(w.start + w.valid for w in self.queue))
        self.queue.clear()
        out = []
        while self.next_emit < final_until:
            total, weight = self.accum.pop(self.next_emit)
            out.append((self.next_emit, np.clip(np.rint(total / weight * 255.0), 0, 255).astype(np.uint8)))
            self.next_emit += 1
        return out

    def _run(self, windows: list[_Window]) -> None:
        batch = torch.stack([frames_to_tensor(w.frames) for w in windows]).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.config.dtype):
            out = self.model.restore(batch, **self.restore_kwargs).float().clamp(0, 1)  # never min-max renormalise
        out = out.permute(0, 2, 3, 4, 1).cpu().numpy()  # (B, T, H, W, 3)
        for window, restored in zip(windows, out):
            self.windows.append((window.start, window.start + window.valid))
            blend_start = window.start > self.first or window.first_pending > 0
            weights = window_weights(self.length, self.overlap, window.first_pending, blend_start)
            for offset in range(window.first_pending, window.valid):
                index = window.start + offset
                total, weight = self.accum.get(index, (0.0, 0.0))
                self.accum[index] = (total + weights[offset] * restored[offset], weight + float(weights[offset]))


def restore_stream(
    frames: Iterable[np.ndarray],
    model: ClipRestorer,
    to_model: Callable[[np.ndarray], np.ndarray],
    from_model: Callable[[np.ndarray, np.ndarray], np.ndarray],
    config: StreamConfig = StreamConfig(),
    *,
    shot_starts: Collection[int] = (),
    windows: list[tuple[int, int]] | None = None,
) -> Iterator[np.ndarray]:
    """Yield restored frames, one per input frame, in order, with bounded memory. Windows and
    their cross-fades start afresh at every index of ``shot_starts`` (the first frames of
    shots); the ranges of the windows run are appended to ``windows`` when given."""
    originals: dict[int, np.ndarray] = {}
    stream = WindowStream(model, config, 0)

    def finished(results: list[tuple[int, np.ndarray]]) -> Iterator[np.ndarray]:
        for index, restored in results:
            original = originals.pop(index)
            yield blend_with_input(from_model(restored, original), original, config.blend_input)

    for index, frame in enumerate(frames):
        if index in shot_starts and index > stream.first:
            yield from finished(stream.close())
            if windows is not None:
                windows += stream.windows
            stream = WindowStream(model, config, index)
        originals[index] = frame
        yield from finished(stream.push(to_model(frame)))
    if stream.count > stream.first:
        yield from finished(stream.close())
    if windows is not None:
        windows += stream.windows
    assert not originals, "every frame is written exactly once"


@dataclasses.dataclass
class _TrackStream:
    track: FaceTrack
    stream: WindowStream

    def square(self, index: int) -> tuple[int, int, int]:
        x0, y0, side = self.track.squares[index - self.track.first]
        return int(x0), int(y0), int(side)


def restore_tracks(
    frames: Iterable[np.ndarray],
    model: ClipRestorer,
    tracks: Sequence[FaceTrack],
    config: StreamConfig = StreamConfig(),
    *,
    streams: dict[int, WindowStream] | None = None,
) -> Iterator[np.ndarray]:
    """Yield each frame with every face track active on it restored and pasted back.

    Each track is its own :class:`WindowStream` over its square crops, from its first frame to
    its end (inside one shot), so a frame is held only until every track on it has its
    restoration: memory stays bounded by the windows in flight, whatever the lengths. Frames
    without a track pass through unchanged. ``streams`` (when given) receives each track's
    closed stream (its windows, its frame count) under the track's position in ``tracks``."""
    from stcvq.faces.tracks import crop_square

    starting: dict[int, list[int]] = collections.defaultdict(list)
    for number, track in enumerate(tracks):
        starting[track.first].append(number)
    active: dict[int, _TrackStream] = {}
    originals: dict[int, np.ndarray] = {}
    pieces: dict[int, list[tuple[tuple[int, int, int], np.ndarray]]] = collections.defaultdict(list)
    waiting: dict[int, int] = {}  # frame -> tracks on it whose restoration has not come back
    next_out = 0

    def finish(number: int, results: list[tuple[int, np.ndarray]]) -> None:
        for index, restored in results:
            pieces[index].append((active[number].square(index), restored))
            waiting[index] -= 1

    def composite(index: int) -> np.ndarray:
        original = originals.pop(index)
        pasted = paste_squares(original, pieces.pop(index, []), config.feather)
        return blend_with_input(pasted, original, config.blend_input)

    def close(number: int) -> None:
        finish(number, active[number].stream.close())
        if streams is not None:
            streams[number] = active[number].stream
        del active[number]

    for index, frame in enumerate(frames):
        for number in starting.pop(index, []):
            active[number] = _TrackStream(tracks[number], WindowStream(model, config, index))
        originals[index] = frame
        waiting[index] = len(active)
        for number, state in list(active.items()):
            square = state.square(index)
            finish(number, state.stream.push(_resize(crop_square(frame, *square), model.size)))
            if index + 1 >= state.track.end:
                close(number)
        while next_out in originals and waiting[next_out] == 0:
            yield composite(next_out)
            del waiting[next_out]
            next_out += 1
    for number in list(active):  # tracks said to run past the last frame read
        close(number)
    while next_out in originals:
        yield composite(next_out)
        next_out += 1


def blend_with_input(restored: np.ndarray, original: np.ndarray, share: float) -> np.ndarray:
    """``(1 - share) * restored + share * original``, rounded; ``share`` 0 returns ``restored``."""
    if share <= 0:
        return restored
    mixed = (1 - share) * restored.astype(np.float32) + share * original.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Choosing the framing


@dataclasses.dataclass
class Plan:
    """What runs on one video and why."""

    framing: Literal["tracks", "face", "whole"]
    reason: str  # in words, for the log and the report
    tracks: list[FaceTrack]  # restored (tracks), or found (face, auto's whole-frame)
    square: tuple[int, int, int] | None = None  # face-crop's fixed (x0, y0, side)


def _square_fraction(squares: np.ndarray, width: int, height: int) -> np.ndarray:
    """The share of the frame each (x0, y0, side) square covers, its outside part not counted."""
    x0, y0, side = squares[:, 0], squares[:, 1], squares[:, 2]
    w = np.clip(np.minimum(x0 + side, width) - np.maximum(x0, 0), 0, None)
    h = np.clip(np.minimum(y0 + side, height) - np.maximum(y0, 0), 0, None)
    return w * h / float(width * height)


def fills_the_frame(tracks: Sequence[FaceTrack], num_frames: int, width: int, height: int,
                    fraction: float) -> tuple[bool, str]:
    """Whether the video already is a face crop: never two faces at once, and the face's
    square covers at least ``fraction`` of the frame on at least half of all frames; and why."""
    on_frame = np.zeros(num_frames, np.int32)
    large = 0
    for track in tracks:
        on_frame[track.first : track.end] += 1
        large += int((_square_fraction(track.squares, width, height) >= fraction).sum())
    if on_frame.max(initial=0) > 1:
        return False, f"up to {on_frame.max()} faces at once"
    fills = large * 2 >= num_frames
    return fills, f"one face at a time, its square covers at least {fraction:.0%} of the frame on {large} of " \
                  f"{num_frames} frames"


def plan_framing(path: Path, info: video.VideoInfo, shots: Sequence[Shot], config: StreamConfig,
                 progress: bool = False) -> Plan:
    """The framing of ``path`` under ``config.framing``, and why; raises a one-line
    ``VideoError`` when tracks or a face-crop are asked for and no face is found."""
    if config.framing == "whole":
        return Plan("whole", "whole-frame (asked)", [])
    from stcvq.faces.tracks import find_tracks

    tracks_config = config.track_config()
    tracks = find_tracks(path, shots, tracks_config, progress=progress)
    shots_with_faces = len({t.shot for t in tracks})
    face_frames = np.zeros(info.num_frames, bool)
    for track in tracks:
        face_frames[track.first : track.end] = True
    found = (f"{len(tracks)} face track{'s' * (len(tracks) != 1)} in {shots_with_faces} of {len(shots)} "
             f"shot{'s' * (len(shots) != 1)}, on {int(face_frames.sum())} of {info.num_frames} frames")
    if not tracks:
        none = f"no face of at least {tracks_config.min_face} px (--min-face) in {info.num_frames} frames"
        if config.framing != "auto":
            asked = "--face-crop" if config.framing == "face" else "--tracks"
            raise video.VideoError(f"{path}: {asked} found {none}; --whole-frame enhances the whole frame")
        return Plan("whole", f"whole-frame (auto: {none})", [])
    if config.framing == "face":
        longest = max(tracks, key=lambda t: (t.end - t.first, -t.first))
        x0, y0, side = square = fixed_square(longest, info.width, info.height)
        where = f"{side} px square at ({x0}, {y0}) covers {side * side / (info.width * info.height):.0%} of the frame"
        return Plan("face", f"face-crop (asked): {found}; the longest track's {where}", tracks, square)
    if config.framing == "tracks":
        return Plan("tracks", f"tracks (asked): {found}", tracks)
    fills, why = fills_the_frame(tracks, info.num_frames, info.width, info.height, config.face_max_fraction)
    if fills:
        return Plan("whole", f"whole-frame (auto: {found}; {why}: already a face crop)", tracks)
    return Plan("tracks", f"tracks (auto: {found}; {why})", tracks)


# ---------------------------------------------------------------------------------------
# Files


def output_pix_fmt(info: video.VideoInfo) -> str:
    """The input's chroma resolution where x264 can keep it: 4:4:4 for RGB and 4:4:4 inputs
    (writing them as 4:2:0 would halve the colour resolution of every frame), 4:2:2 for 4:2:2,
    else 4:2:0. 4:2:0 and 4:2:2 need even sides, else 4:4:4."""
    shift_x, shift_y = video.chroma_shifts(info.pix_fmt)
    if shift_x == 0:  # 4:4:4 (and the rare 4:4:0)
        return "yuv444p"
    if shift_y == 0 and shift_x == 1 and info.width % 2 == 0:
        return "yuv422p"
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
    framing: str  # "tracks", "face" or "whole": what ran
    framing_reason: str
    face_square: tuple[int, int, int] | None  # (x0, y0, side) enhanced and pasted back, for face-crop
    timing: str  # "constant" (frame i at i / fps) or "variable" (each input timestamp kept)
    shots: list[list[int]]  # [first, end) frame ranges of the shots
    tracks: list[dict]  # {shot, first, end, side_px, frames_restored} per face track restored
    seconds_detecting: float  # shots and face tracks (the first pass)
    seconds_restoring: float  # the second pass: decode, restore, paste, encode
    fidelity: float
    blend_input: float
    compare: str | None  # the side-by-side video, when asked
    # windows run, per stream: {"track": its position in ``tracks`` (None for whole-frame and
    # face-crop), "windows": [[first, end), ...]}; no window may cross a shot cut
    debug: dict


def enhance_file(
    src: str | Path,
    dst: str | Path,
    model: ClipRestorer,
    config: StreamConfig = StreamConfig(),
    *,
    force: bool = False,
    progress: bool = True,
    compare: str | Path | None = None,
) -> EnhanceReport:
    """Enhance one video file into ``dst`` (written atomically), keeping frame count, timing,
    size and audio. ``compare`` also writes the input | output side-by-side video there."""
    from stcvq.faces.shots import detect_shots

    src, dst = Path(src), Path(dst)
    compare = Path(compare) if compare is not None else None
    for target in (dst, compare):
        if target is None:
            continue
        if src.resolve() == target.resolve():
            raise ValueError(f"{target}: output would overwrite its own input")
        if target.exists() and not force:
            raise FileExistsError(f"{target}: exists; pass --force to overwrite")
    if compare is not None and compare.resolve() == dst.resolve():
        raise ValueError(f"{compare}: the comparison would overwrite the output")
    if config.fidelity > 0 and not restores_with_fidelity(model):
        raise ValueError(f"fidelity {config.fidelity}: this model's restore() has no fidelity")
    info = video.probe(src)
    started = time.perf_counter()
    shots = detect_shots(src, config.shot_config(), info.num_frames)
    plan = plan_framing(src, info, shots, config, progress=progress)
    seconds_detecting = time.perf_counter() - started
    log.info("%s: %s", src, plan.reason)
    # Timing: a variable-rate input keeps every frame's own timestamp rather than being made
    # constant-rate at its average rate, because duplicating or dropping frames to hit a
    # constant rate would change the frame count and put repeated frames through the
    # temporal model; kept timestamps keep the copied audio in sync as well. A constant-rate
    # input is written at the rate its timestamps show: the container's average rate can be
    # off, e.g. after frames were selected with -fps_mode vfr.
    times = video.frame_times(src)
    rate = times.regular_rate(Fraction(info.fps_fraction) or None) if times is not None else None
    variable = times is not None and rate is None and len(times.pts) > 1
    restoring = time.perf_counter()
    bar = tqdm(total=info.num_frames or None, unit="frame", desc=src.name, disable=not progress)
    written_frames = 0
    streams: dict[int, WindowStream] = {}
    whole_windows: list[tuple[int, int]] = []

    def restored_frames() -> Iterator[np.ndarray]:
        if plan.framing == "tracks":
            return restore_tracks(video.read_frames(src), model, plan.tracks, config, streams=streams)
        framing = (FaceCrop(plan.square, model.size, config.feather) if plan.framing == "face"
                   else WholeFrame(info.height, info.width, model.size))
        return restore_stream(video.read_frames(src), model, framing.to_model, framing.from_model, config,
                              shot_starts={s.first for s in shots}, windows=whole_windows)

    def frames_with_progress() -> Iterator[np.ndarray]:
        nonlocal written_frames
        for frame in restored_frames():
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
    seconds_restoring = time.perf_counter() - restoring
    if compare is not None:
        write_comparison(src, dst, compare, shots, plan, rate or info.fps_fraction, config.crf,
                         times=times if variable else None)
    seconds = time.perf_counter() - started
    written = video.probe(dst)
    fps = written_frames / max(seconds, 1e-9)
    log.info("%s -> %s: %d frames in %.1f s (%.2f frames/s; detecting %.1f s, restoring %.1f s)",
             src, dst, written_frames, seconds, fps, seconds_detecting, seconds_restoring)
    if plan.framing == "tracks":
        track_rows = [{"shot": int(t.shot), "first": int(t.first), "end": int(t.end), "side_px": int(t.side_px),
                       "frames_restored": streams[n].count - streams[n].first if n in streams else 0}
                      for n, t in enumerate(plan.tracks)]
        windows_run = [{"track": n, "windows": [list(w) for w in streams[n].windows] if n in streams else []}
                       for n in range(len(plan.tracks))]
    else:
        track_rows, windows_run = [], [{"track": None, "windows": [list(w) for w in whole_windows]}]
    return EnhanceReport(
        input=str(src), output=str(dst), frames=written_frames, seconds=seconds, frames_per_second=fps,
        fps=written.fps_fraction, width=written.width, height=written.height, audio=written.has_audio,
        framing=plan.framing, framing_reason=plan.reason, face_square=plan.square,
        timing="variable" if variable else "constant",
        shots=[[int(s.first), int(s.end)] for s in shots], tracks=track_rows,
        seconds_detecting=seconds_detecting, seconds_restoring=seconds_restoring,
        fidelity=config.fidelity, blend_input=config.blend_input,
        compare=str(compare) if compare is not None else None, debug={"windows": windows_run},
    )


# ---------------------------------------------------------------------------------------
# The side-by-side comparison

_GREEN, _WHITE, _BLACK = (60, 220, 60), (255, 255, 255), (0, 0, 0)


def _label(image: np.ndarray, text: str, origin: tuple[int, int], scale: float) -> None:
    thickness = max(1, int(round(scale * 2)))
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _BLACK, thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _WHITE, thickness, cv2.LINE_AA)


def comparison_frame(original: np.ndarray, restored: np.ndarray, shot: int,
                     squares: Sequence[tuple[int, tuple[int, int, int]]]) -> np.ndarray:
    """``original | restored`` side by side, ``(label, (x0, y0, side))`` squares drawn on the
    input half (the output half stays as written, seams and all), and the shot number on both."""
    left = np.ascontiguousarray(original).copy()
    height = left.shape[0]
    scale = max(0.3, height / 480)
    for label, (x0, y0, side) in squares:
        cv2.rectangle(left, (x0, y0), (x0 + side - 1, y0 + side - 1), _GREEN, max(1, height // 240))
        _label(left, str(label), (max(x0, 0) + 2, max(y0, 0) + int(14 * scale * 2)), scale)
    right = np.ascontiguousarray(restored).copy()
    for half, name in ((left, "input"), (right, "output")):
        _label(half, f"{name}, shot {shot}", (4, height - 6), scale)
    return np.concatenate([left, right], axis=1)


def write_comparison(src: Path, dst: Path, compare: Path, shots: Sequence[Shot], plan: Plan,
                     rate: str | Fraction, crf: int, times: video.FrameTimes | None = None) -> Path:
    """The input and the written output decoded side by side into ``compare`` (twice as wide),
    at the same timing, with the restored squares and the shot numbers drawn."""
    shot_of = {i: s.index for s in shots for i in range(s.first, s.end)}

    def squares(index: int) -> list[tuple[int, tuple[int, int, int]]]:
        if plan.framing == "face":
            return [(0, plan.square)]
        if plan.framing != "tracks":
            return []
        return [(n, tuple(int(v) for v in t.squares[index - t.first]))
                for n, t in enumerate(plan.tracks) if t.first <= index < t.end]

    frames = (comparison_frame(a, b, shot_of.get(i, -1), squares(i))
              for i, (a, b) in enumerate(zip(video.read_frames(src), video.read_frames(dst))))
    info = video.probe(src)
    pix_fmt = output_pix_fmt(dataclasses.replace(info, width=2 * info.width))
    return video.write_video(compare, frames, rate, crf=crf, pix_fmt=pix_fmt, audio_from=src, times=times)
