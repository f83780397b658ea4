"""Stage ``orientation``: drop side faces with the side ratio of 68-point landmarks.

side ratio alpha = |x36 - x30| / |x45 - x30| (x coordinates of the outer eye corners 36 and 45
and the nose tip 30, iBUG 68-point scheme; paper, data filters). A frontal face has alpha
near 1; turning the head shrinks one eye-to-nose distance, so alpha moves towards 0 or
infinity. A frame is a side face when alpha < ``min_side_ratio`` or > ``max_side_ratio`` or the
nose tip is outside the two eye corners (alpha alone misses a head turned so far that the
nose passes the far eye: both distances can then be similar).

Landmarks are fitted on the ORIGINAL frames of the row's face track found by ``crop`` (up to
``sample_frames`` of its frames with a real detection, evenly chosen), inside the detected box of
that frame: the original pixels are sharper than the profile-resolution crop. Each track is
judged on its own, so a video with a frontal and a side face keeps the frontal one. A video is dropped as
``side_face`` when more than ``max_side_fraction`` of its measured frames are side faces
(default 0.2: a talking head turns briefly; one noisy landmark fit must not drop a video).

Roll correction (``roll_correction``, default on; our addition): the paper's formula uses
image x coordinates, which assumes an upright head. A head tilted in the image plane moves
the nose tip sideways relative to the eye corners in x even when it looks straight at the
camera: carphone tilts ~30 degrees and reaches x-only alpha 5.5 in frames where the eye-axis
alpha is 1.8 (and 0.66-1.81 over the whole clip). We therefore measure the three points
along the axis through the outer eye corners. ``roll_correction: false`` gives the paper's
formula exactly.

Frames where the frontal detector found no face are not measured (a full profile is
usually not detected at all; such a video is already dropped as ``no_face`` when too few
frames have a face).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from stcvq.config import check
from stcvq.data.curate.manifest import Row, drop, update
from stcvq.data.curate.runner import run_stage
from stcvq.faces import detection
from stcvq.media.video import read_frames, sample_indices

log = logging.getLogger(__name__)

STAGE = "orientation"
NOSE_TIP, RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 30, 36, 45


@dataclasses.dataclass
class OrientationConfig:
    min_side_ratio: float = 0.4
    max_side_ratio: float = 2.5
    max_side_fraction: float = 0.2  # a video is side-face when more of its frames are
    sample_frames: int = 16  # face-track frames measured at most
    roll_correction: bool = True  # measure along the eye axis; False = the paper's image-x formula
    enabled: bool = True  # False: measure and record, drop nothing (data-filter ablation)

    def __post_init__(self) -> None:
        check(0 < self.min_side_ratio < 1 < self.max_side_ratio,
              "orientation: need 0 < min_side_ratio < 1 < max_side_ratio")
        check(0.0 <= self.max_side_fraction < 1.0, "orientation.max_side_fraction must be in [0, 1)")
        check(self.sample_frames >= 1, "orientation.sample_frames must be >= 1")


def _eye_axis_coordinates(points: np.ndarray, roll_correction: bool) -> tuple[float, float, float]:
    """Coordinates of (x36, x30, x45) along the face's horizontal axis.

    Without roll correction that is the image x axis (the paper's formula). With it, the axis
    through the two outer eye corners: a head tilted in the image plane (carphone tilts ~30
    degrees) is not a side face, but tilting moves the nose tip sideways in x and inflates the
    x-only ratio (carphone: 5.5 x-only vs 1.8 along the eye axis in the same frame).
    """
    if roll_correction:
        axis = points[LEFT_EYE_OUTER] - points[RIGHT_EYE_OUTER]
        norm = float(np.hypot(*axis))
        if norm > 0:
            unit = axis / norm
            return tuple(float(np.dot(points[k], unit)) for k in (RIGHT_EYE_OUTER, NOSE_TIP, LEFT_EYE_OUTER))
    return tuple(float(points[k, 0]) for k in (RIGHT_EYE_OUTER, NOSE_TIP, LEFT_EYE_OUTER))


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"side_ratio: expected (68, 2) landmarks, got {points.shape}")
    return points


def side_ratio(landmarks: np.ndarray, roll_correction: bool = False) -> float:
    """alpha = |x36 - x30| / |x45 - x30| of one (68, 2) landmark array (inf when x45 == x30).

    ``roll_correction=False`` is the paper's formula on image x coordinates; True measures the
    same distances along the eye-corner axis (see :func:`_eye_axis_coordinates`).
    """
    right_eye, nose, left_eye = _eye_axis_coordinates(_check_landmarks(landmarks), roll_correction)
    near, far = abs(right_eye - nose), abs(left_eye - nose)
    return float(near / far) if far > 0 else float("inf")


def is_side_face(
    landmarks: np.ndarray,
    min_side_ratio: float = 0.4,
    max_side_ratio: float = 2.5,
    roll_correction: bool = False,
) -> bool:
    """Side face: alpha outside [min, max] or the nose tip outside the outer eye corners."""
    points = _check_landmarks(landmarks)
    right_eye, nose, left_eye = _eye_axis_coordinates(points, roll_correction)
    alpha = side_ratio(points, roll_correction)
    low, high = min(right_eye, left_eye), max(right_eye, left_eye)
    nose_outside = not (low <= nose <= high)
    return bool(alpha < min_side_ratio or alpha > max_side_ratio or nose_outside)


def read_indices(path: str | Path, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The frames ``indices`` of ``path`` (one decoding pass that stops after the last)."""
    wanted = set(indices)
    if not wanted:
        return {}
    out = {}
    for i, frame in enumerate(read_frames(path, start=min(wanted), stop=max(wanted) + 1), start=min(wanted)):
        if i in wanted:
            out[i] = frame
    return out


def measure_orientation(row: Row, config: OrientationConfig) -> Row:
    track = row["face_track"] or []
    chosen = [track[i] for i in sample_indices(len(track), config.sample_frames)]
    frames = read_indices(row["raw_path"], [t[0] for t in chosen])
    ratios, sides = [], []
    for index, x0, y0, x1, y1 in chosen:
        if index not in frames:
            continue  # the file ended early; measure what is there
        points = detection.landmarks68(frames[index], detection.FaceBox(x0, y0, x1, y1, score=0.0))
        ratios.append(side_ratio(points, config.roll_correction))
        sides.append(is_side_face(points, config.min_side_ratio, config.max_side_ratio, config.roll_correction))
    if not ratios:
        return drop(row, "no_face", STAGE)
    fraction = float(np.mean(sides))
    row = update(row, {
        "orientation_frames": len(ratios),
        "side_ratio_min": float(np.min(ratios)),
        # inf (nose exactly below the far eye corner) is not valid in JSON metrics; cap it
        "side_ratio_max": float(min(np.max(ratios), 1e6)),
        "side_fraction": fraction,
    })
    if fraction > config.max_side_fraction and config.enabled:
        return drop(row, "side_face", STAGE)
    return row


def run_orientation(rows: Sequence[Row], config: OrientationConfig, workers: int = 1) -> list[Row]:
    return run_stage(STAGE, measure_orientation, rows, config, workers)
