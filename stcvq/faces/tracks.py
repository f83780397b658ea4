"""Face tracks: every face of every shot, followed over time by a smooth square crop.

1. Detect. dlib (HOG by default, :mod:`stcvq.faces.detection`) on every ``detect_every``-th frame
   of each shot and on its last frame (a face that enters mid-shot is picked up at most
   ``detect_every - 1`` frames late), on a copy shrunk to at most ``detect_max_side``; the boxes
   are scaled back to frame pixels. Faces whose side (mean of box width and height) is below
   ``min_face`` are left out of the linking.
2. Link, within each shot only. Each detection frame's faces are matched to the open tracks by
   centre distance in face sides (Hungarian assignment, :func:`scipy.optimize.linear_sum_assignment`);
   a pair further apart than ``link_distance`` sides, or whose sides differ by more than
   ``max_side_change``, does not match. A track that has gone ``max_gap`` frames without a match
   is closed; an unmatched face opens a new track. A short linker rather than a tracking library,
   because none installs beside our pins: norfair 2.3 needs numpy < 2; ByteTrack left supervision
   after 0.26 for Roboflow's ``trackers``, and both supervision 0.26 and ``trackers`` 2.6 require
   the non-headless opencv-python. Nor would their online Kalman filters add much here: the
   detections of a whole shot are at hand, a shot holds a few faces, and a face moves a fraction
   of its size between detections.
3. Fill and smooth. Tracks shorter than ``min_track_frames``, or found on fewer than
   ``min_detected`` of the detection frames they span (a false detection flickers: on Big Buck
   Bunny HOG saw a "face" on 3 of 12), are dropped; per shot the ``max_faces`` largest (median
   side) are kept. The centre and side of the frames between
   detections are interpolated linearly, then each is smoothed over time with a Savitzky-Golay
   filter (``smooth_window`` frames, polynomial ``smooth_order``): it removes the detector's
   frame-to-frame jitter but, being a local polynomial fit, follows a face that moves or zooms
   without the lag of a moving average.
4. Frame. The crop of each frame is a square of side ``enlarge`` x the smoothed face side around
   the smoothed centre: the crop stage's enlarged-square rule. It may reach past the frame edge;
   :func:`crop_square` pads by repeating edge pixels, :func:`fit_square` instead shifts and
   shrinks it into the frame (training crops never contain synthetic pixels).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from stcvq.config import check
from stcvq.faces import detection
from stcvq.faces.shots import Shot
from stcvq.media import resample
from stcvq.media.video import read_frames

log = logging.getLogger(__name__)

_UNMATCHED = 1e6  # cost of a pair the linker must not match


@dataclasses.dataclass(frozen=True)
class TrackConfig:
    detector: Literal["hog", "cnn"] = "hog"
    upsample: int = 1  # HOG finds faces from about 40 px with one doubling, 80 px without
    # detect on every k-th frame of a shot (and its last), interpolate the rest: on the test footage
    # k = 3 missed no face-frame of every-frame detection, centre 0.035 vs 0.033 face sides off, at 1/3
    # of the cost (benchmarks/bench_tracking.py --miss-rate)
    detect_every: int = 3
    detect_max_side: int = 640  # frames are shrunk to this longer side before detection
    min_face: int = 40  # px, face side in frame pixels: smaller detections are ignored
    max_faces: int = 16  # at most this many tracks per shot, largest first
    enlarge: float = 1.3  # crop square side / smoothed face side (the crop stage's rule)
    min_track_frames: int = 10  # shorter tracks are dropped (false detections rarely last)
    min_detected: float = 0.5  # fraction of a track's detection frames with a real detection, else dropped
    max_gap: int = 15  # frames a track may go undetected and be filled by interpolation
    link_distance: float = 0.6  # centre distance, in face sides, within which a face continues a track
    max_side_change: float = 1.5  # a face continues a track only if the sides differ by at most this factor
    smooth_window: int = 15  # Savitzky-Golay window in frames (odd; shortened for short tracks)
    smooth_order: int = 2  # Savitzky-Golay polynomial order

    def __post_init__(self) -> None:
        check(self.detector in ("hog", "cnn"), f"detector must be 'hog' or 'cnn', got {self.detector!r}")
        check(self.upsample >= 0, f"upsample must be >= 0, got {self.upsample}")
        check(self.detect_every >= 1, f"detect_every must be >= 1, got {self.detect_every}")
        check(self.detect_max_side >= 32, f"detect_max_side must be >= 32, got {self.detect_max_side}")
        check(self.min_face >= 1, f"min_face must be >= 1 (pixels), got {self.min_face}")
        check(self.max_faces >= 1, f"max_faces must be >= 1, got {self.max_faces}")
        check(self.enlarge >= 1.0, f"enlarge must be >= 1, got {self.enlarge}")
        check(self.min_track_frames >= 1, f"min_track_frames must be >= 1, got {self.min_track_frames}")
        check(0.0 <= self.min_detected <= 1.0, f"min_detected must be in [0, 1], got {self.min_detected}")
        check(self.max_gap >= self.detect_every - 1,
              f"max_gap must be >= detect_every - 1 = {self.detect_every - 1} (the frames between two "
              f"detections), got {self.max_gap}")
        check(self.link_distance > 0, f"link_distance must be > 0, got {self.link_distance}")
        check(self.max_side_change >= 1.0, f"max_side_change must be >= 1, got {self.max_side_change}")
        check(self.smooth_window >= 1 and self.smooth_window % 2 == 1,
              f"smooth_window must be an odd number >= 1, got {self.smooth_window}")
        check(0 <= self.smooth_order < max(self.smooth_window, 1) or self.smooth_window == 1,
              f"smooth_order must be in [0, smooth_window), got {self.smooth_order}")


@dataclasses.dataclass
class FaceTrack:
    """One face followed through frames ``[first, end)`` of shot ``shot``.

    ``squares[i]`` is (x0, y0, side) of the smoothed square crop of frame ``first + i`` in frame
    pixels; it may reach past the frame edge. ``detected[i]`` says whether that frame had a real
    detection of this face (the others are interpolated). ``boxes[i]`` is that detection's box
    (x0, y0, x1, y1; x1/y1 exclusive) and zeros where ``detected[i]`` is False.
    """

    shot: int
    track: int
    first: int
    end: int
    squares: np.ndarray
    detected: np.ndarray
    boxes: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return self.end - self.first

    @property
    def side_px(self) -> int:
        """Median square side in frame pixels."""
        return int(np.median(self.squares[:, 2]))

    def face_boxes(self) -> list[tuple[int, detection.FaceBox]]:
        """(frame index, detected box) of the frames with a real detection."""
        if self.boxes is None:
            return []
        return [(self.first + int(i), detection.FaceBox(*(int(v) for v in self.boxes[i]), score=0.0))
                for i in np.flatnonzero(self.detected)]


def face_side(box: detection.FaceBox) -> float:
    return (box.width + box.height) / 2.0


def detect_in_frame(frame: np.ndarray, config: TrackConfig = TrackConfig()) -> list[detection.FaceBox]:
    """Faces of one frame in its own pixels (detection may run shrunk); linking applies ``min_face``."""
    h, w = frame.shape[:2]
    scale = min(1.0, config.detect_max_side / max(h, w))
    if scale >= 1.0:
        return detection.detect_faces(frame, upsample=config.upsample, detector=config.detector)
    small = resample.resize(frame, max(1, round(w * scale)), max(1, round(h * scale)))
    return [b.scaled(1.0 / scale) for b in detection.detect_faces(small, config.upsample, config.detector)]


def detection_frames(shot: Shot, every: int) -> list[int]:
    """Frames of ``shot`` searched for faces: every ``every``-th from its first, and its last."""
    frames = list(range(shot.first, shot.end, every))
    if frames[-1] != shot.end - 1:
        frames.append(shot.end - 1)
    return frames


@dataclasses.dataclass
class _OpenTrack:
    frames: list[int]
    boxes: list[detection.FaceBox]


def link_shot(detections: Sequence[tuple[int, list[detection.FaceBox]]], config: TrackConfig) -> list[_OpenTrack]:
    """Detections of one shot (frame, boxes), frames ascending, linked into tracks."""
    from scipy.optimize import linear_sum_assignment

    open_tracks: list[_OpenTrack] = []
    closed: list[_OpenTrack] = []
    for frame, boxes in detections:
        still_open = []
        for track in open_tracks:  # undetected for more than max_gap frames: the face has gone
            (still_open if frame - track.frames[-1] - 1 <= config.max_gap else closed).append(track)
        open_tracks = still_open
        matched: set[int] = set()
        if open_tracks and boxes:
            cost = np.full((len(open_tracks), len(boxes)), _UNMATCHED)
            for i, track in enumerate(open_tracks):
                last = track.boxes[-1]
                for j, box in enumerate(boxes):
                    side = max(face_side(last), face_side(box))
                    ratio = side / max(min(face_side(last), face_side(box)), 1e-6)
                    distance = float(np.hypot(*np.subtract(last.center, box.center))) / side
                    if distance <= config.link_distance and ratio <= config.max_side_change:
                        cost[i, j] = distance
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] < _UNMATCHED:
                    open_tracks[i].frames.append(frame)
                    open_tracks[i].boxes.append(boxes[j])
                    matched.add(int(j))
        open_tracks += [_OpenTrack([frame], [box]) for j, box in enumerate(boxes) if j not in matched]
    return closed + open_tracks


def smooth(values: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay smoothing of a 1-D series; the window shrinks (odd) for short series."""
    from scipy.signal import savgol_filter

    window = min(window, len(values) if len(values) % 2 else len(values) - 1)
    if window <= order or window < 3:
        return values.astype(np.float64)
    return savgol_filter(values.astype(np.float64), window, order, mode="interp")


def fill_track(track: _OpenTrack, config: TrackConfig) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """(first, end, squares, detected, boxes) of a linked track: gaps interpolated, then smoothed."""
    first, end = track.frames[0], track.frames[-1] + 1
    frames = np.asarray(track.frames)
    every = np.arange(first, end)
    cx = np.interp(every, frames, [b.center[0] for b in track.boxes])
    cy = np.interp(every, frames, [b.center[1] for b in track.boxes])
    side = np.interp(every, frames, [face_side(b) for b in track.boxes])
    cx, cy, side = (smooth(v, config.smooth_window, config.smooth_order) for v in (cx, cy, side))
    square = np.maximum(1, np.round(config.enlarge * side))
    squares = np.stack([np.round(cx - square / 2), np.round(cy - square / 2), square], axis=1).astype(np.int32)
    detected = np.zeros(len(every), dtype=bool)
    detected[frames - first] = True
    boxes = np.zeros((len(every), 4), dtype=np.int32)
    boxes[frames - first] = [b.as_tuple() for b in track.boxes]
    return first, end, squares, detected, boxes


def tracks_of_shot(
    shot: Shot, detections: Sequence[tuple[int, list[detection.FaceBox]]], config: TrackConfig, first_id: int = 0
) -> list[FaceTrack]:
    """The face tracks of one shot from its detections (frame, boxes); ids count from ``first_id``."""
    inside = [(f, [b for b in boxes if face_side(b) >= config.min_face])
              for f, boxes in sorted(detections, key=lambda d: d[0]) if shot.first <= f < shot.end]
    searched = np.array([f for f, _ in inside])

    def wanted(track: _OpenTrack) -> bool:
        first, last = track.frames[0], track.frames[-1]
        spanned = int(((searched >= first) & (searched <= last)).sum())
        return last + 1 - first >= config.min_track_frames and len(track.frames) >= config.min_detected * spanned

    linked = [t for t in link_shot(inside, config) if wanted(t)]
    linked.sort(key=lambda t: (-float(np.median([face_side(b) for b in t.boxes])), t.frames[0]))
    linked = sorted(linked[:config.max_faces], key=lambda t: (t.frames[0], t.boxes[0].x0, t.boxes[0].y0))
    tracks = []
    for offset, track in enumerate(linked):
        first, end, squares, detected, boxes = fill_track(track, config)
        tracks.append(FaceTrack(shot.index, first_id + offset, first, end, squares, detected, boxes))
    return tracks


def tracks_from_detections(
    shots: Sequence[Shot], detections: Iterable[tuple[int, list[detection.FaceBox]]], config: TrackConfig
) -> list[FaceTrack]:
    """The face tracks of every shot; ids unique within the video, in shot order."""
    detections = list(detections)
    tracks: list[FaceTrack] = []
    for shot in shots:
        tracks += tracks_of_shot(shot, detections, config, first_id=len(tracks))
    return tracks


def detect_video(
    path: Path, shots: Sequence[Shot], config: TrackConfig = TrackConfig(), progress: bool = False
) -> list[tuple[int, list[detection.FaceBox]]]:
    """(frame, faces) for the detection frames of every shot, in one streaming decoding pass."""
    wanted = sorted({f for shot in shots for f in detection_frames(shot, config.detect_every)})
    if not wanted:
        return []
    wanted_set = set(wanted)
    frames = read_frames(path, stop=wanted[-1] + 1)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, total=wanted[-1] + 1, desc=f"faces {Path(path).name}", unit="frame")
    return [(i, detect_in_frame(frame, config)) for i, frame in enumerate(frames) if i in wanted_set]


def find_tracks(
    path: Path, shots: list[Shot], config: TrackConfig = TrackConfig(), progress: bool = False
) -> list[FaceTrack]:
    """The face tracks of the video at ``path`` within its ``shots`` (see the module doc)."""
    return tracks_from_detections(shots, detect_video(path, shots, config, progress), config)


def crop_square(frame: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The ``side`` x ``side`` square at (x0, y0) of ``frame``; parts outside repeat the edge pixels."""
    h, w = frame.shape[:2]
    ax0, ay0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    ax1, ay1 = max(min(x0 + side, w), ax0 + 1), max(min(y0 + side, h), ay0 + 1)
    inside = frame[ay0:ay1, ax0:ax1]
    pad = ((ay0 - y0, y0 + side - ay1), (ax0 - x0, x0 + side - ax1)) + ((0, 0),) * (frame.ndim - 2)
    if not any(p for pair in pad for p in pair):
        return inside.copy()
    # a square wholly outside the frame repeats the nearest edge pixel
    return np.pad(inside, tuple((max(a, 0), max(b, 0)) for a, b in pad), mode="edge")[:side, :side]


def fit_square(x0: int, y0: int, side: int, width: int, height: int) -> tuple[int, int, int]:
    """(x0, y0, side) of the square moved, and shrunk about its centre if larger than the frame's
    shorter side, so that it lies inside a ``width`` x ``height`` frame (no padding needed)."""
    fitted = max(1, min(side, width, height))
    cx, cy = x0 + side / 2.0, y0 + side / 2.0
    x0 = min(max(int(round(cx - fitted / 2.0)), 0), width - fitted)
    y0 = min(max(int(round(cy - fitted / 2.0)), 0), height - fitted)
    return x0, y0, fitted
