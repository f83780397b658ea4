"""Shots: the cuts of a video, found with PySceneDetect on the decoded frames.

Frames are decoded with PyAV (:func:`stcvq.media.video.read_frames`), shrunk to at most
``detect_max_side`` (integer area averaging, :mod:`stcvq.media.resample`, so the result does not
depend on the CPU) and handed one by one to PySceneDetect's ``ContentDetector``: a cut where the
weighted HSV change between adjacent frames exceeds ``threshold``. A cut closer than
``min_shot_frames`` to the previous one is ignored (a flash or a fast pan is not a new shot).

A shot is a half-open frame range ``[first, end)``; the shots of a video tile ``[0, num_frames)``
without gap or overlap, so anything that works over time (windows, cross-fades, training clips)
stays inside one shot by staying inside one range.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from stcvq.config import check
from stcvq.media import resample
from stcvq.media.video import probe, read_frames

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Shot:
    """Frames ``[first, end)`` of a video; ``index`` counts shots from 0."""

    index: int
    first: int
    end: int

    @property
    def num_frames(self) -> int:
        return self.end - self.first


@dataclasses.dataclass(frozen=True)
class ShotConfig:
    threshold: float = 27.0  # HSV change between adjacent frames that makes a cut (PySceneDetect's default)
    min_shot_frames: int = 15  # a cut closer than this to the previous one is ignored
    detect_max_side: int = 256  # frames are shrunk to this longer side first (PySceneDetect's own default width)

    def __post_init__(self) -> None:
        check(self.threshold > 0, f"threshold must be > 0, got {self.threshold}")
        check(self.min_shot_frames >= 1, f"min_shot_frames must be >= 1, got {self.min_shot_frames}")
        check(self.detect_max_side >= 16, f"detect_max_side must be >= 16, got {self.detect_max_side}")


def _shrunk_bgr(frame: np.ndarray, max_side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        frame = resample.resize(frame, max(1, round(w * scale)), max(1, round(h * scale)))
    return np.ascontiguousarray(frame[..., ::-1])  # PySceneDetect reads OpenCV's BGR


def find_cuts(
    frames: Iterable[np.ndarray], config: ShotConfig = ShotConfig(), fps: float = 30.0
) -> tuple[list[int], int]:
    """(frame indices where a new shot starts, frames read) of RGB ``frames``."""
    from scenedetect import ContentDetector, FrameTimecode

    detector = ContentDetector(threshold=config.threshold, min_scene_len=config.min_shot_frames)
    cuts: list[int] = []
    count = 0
    for count, frame in enumerate(frames, start=1):
        timecode = FrameTimecode(count - 1, fps=fps)
        cuts += [c.frame_num for c in detector.process_frame(timecode, _shrunk_bgr(frame, config.detect_max_side))]
    if count:
        cuts += [c.frame_num for c in detector.post_process(FrameTimecode(count - 1, fps=fps))]
    return sorted({c for c in cuts if 0 < c < count}), count


def shots_from_cuts(cuts: Iterable[int], num_frames: int) -> list[Shot]:
    """The shots between ``cuts`` (start frames of new shots) over ``[0, num_frames)``."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < num_frames}), num_frames]
    return [Shot(i, a, b) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]


def detect_shots(path: Path, config: ShotConfig = ShotConfig(), num_frames: int | None = None) -> list[Shot]:
    """The shots of the video at ``path`` (one decoding pass).

    ``num_frames`` (when known, e.g. from the manifest) stops decoding there; the shots always
    tile the frames actually read.
    """
    fps = probe(path).fps or 30.0
    cuts, count = find_cuts(read_frames(path, stop=num_frames), config, fps=fps)
    shots = shots_from_cuts(cuts, count)
    log.debug("%s: %d frames, cuts at %s", path, count, cuts)
    return shots
