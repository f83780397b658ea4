"""Stage ``motion``: motion intensity of each cropped video (paper supplement).

For adjacent frames, the absolute difference of their grayscale versions is binarised with
``threshold`` (a pixel moves when |gray_t - gray_t-1| > threshold, on the 0-255 scale) and
the non-zero pixels are counted. We store the mean count per frame pair
(``motion_intensity``) and that mean divided by the frame area (``motion_intensity_norm``,
in [0, 1], comparable across resolutions). It is measured on the cropped face video that
training will see, over every frame (64x64 lossless frames are cheap to decode).
Gray is ITU-R BT.601 luma (``cv2.COLOR_RGB2GRAY``).

With ``min_intensity_norm`` > 0 the stage drops near-static videos (reason ``static``);
the default 0 keeps everything and only measures.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Sequence

import cv2
import numpy as np

from stcvq.config import check
from stcvq.data.curate.manifest import Row, drop, update
from stcvq.data.curate.runner import run_stage
from stcvq.media.video import read_frames

log = logging.getLogger(__name__)

STAGE = "motion"


@dataclasses.dataclass
class MotionConfig:
    threshold: int = 10  # gray-level difference above which a pixel counts as moving
    min_intensity_norm: float = 0.0  # drop videos below this (0 = off)

    def __post_init__(self) -> None:
        check(0 <= self.threshold < 255, "motion.threshold must be in [0, 255)")
        check(0.0 <= self.min_intensity_norm <= 1.0, "motion.min_intensity_norm must be in [0, 1]")


def moving_pixels(previous_gray: np.ndarray, gray: np.ndarray, threshold: int) -> int:
    """Non-zero pixels of the binarised |gray - previous_gray|."""
    diff = cv2.absdiff(gray, previous_gray)
    _, binary = cv2.threshold(diff, threshold, 255, cv2.THRESH_BINARY)  # > threshold -> 255
    return int(cv2.countNonZero(binary))


def motion_intensity(frames: Iterable[np.ndarray], threshold: int) -> tuple[int, float, float]:
    """(frame pairs, mean moving pixels per pair, that mean / frame area) of RGB frames."""
    previous, counts, area = None, [], 0
    for frame in frames:
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        if previous is not None:
            counts.append(moving_pixels(previous, gray, threshold))
        previous, area = gray, gray.shape[0] * gray.shape[1]
    if not counts:
        return 0, 0.0, 0.0
    mean = float(np.mean(counts))
    return len(counts), mean, mean / area


def measure_motion(row: Row, config: MotionConfig) -> Row:
    pairs, mean, norm = motion_intensity(read_frames(row["cropped_path"]), config.threshold)
    row = update(row, {"motion_pairs": pairs, "motion_intensity": mean, "motion_intensity_norm": norm})
    if pairs == 0:
        return drop(row, "too_short: fewer than 2 frames in the crop", STAGE)
    if norm < config.min_intensity_norm:
        return drop(row, "static", STAGE)
    return row


def run_motion(rows: Sequence[Row], config: MotionConfig, workers: int = 1) -> list[Row]:
    return run_stage(STAGE, measure_motion, rows, config, workers)
