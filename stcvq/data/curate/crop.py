"""Stage ``crop`` (face proportion): find the face track, crop a square around it.

For each video, ``sample_frames`` evenly spread frames are decoded and searched for faces
(dlib HOG with ``upsample`` by default, the CNN detector as an option). Frames larger than
``detect_max_side`` are shrunk first (area averaging) and the boxes scaled back: a 1280x720
frame upsampled for HOG would cost 16x a 320-wide one and the faces we want fill a good part
of the frame anyway.

The face track is the largest face of each sampled frame, minus detections whose centre is
more than ``max_track_jump`` median face widths away from the median centre (a stray false
positive must not stretch the crop). The crop region is the smallest box covering the whole
track (:func:`crop_box_from_track`): over all boxes that contain the face in every frame,
this one has the largest mean face proportion. It is enlarged by ``enlarge`` around its
centre and made square (side = the longer side). A square that does not fit is first
shifted into the frame; if it is larger than the frame's shorter side it is shrunk to that
side (centred on the face as far as the frame allows). No padding is ever added, so
training crops never contain synthetic borders.

The cropped video is written at ``resolution`` x ``resolution`` (area averaging when shrinking,
bicubic when enlarging, in integer maths: :mod:`stcvq.media.resample`) as lossless FFV1 in RGB (.mkv):
later stages read exactly these pixels. Fewer than ``min_face_frames`` of the sampled frames
with a face -> ``no_face``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from stcvq.config import check
from stcvq.data.curate.manifest import Row, drop, update
from stcvq.data.curate.runner import run_stage
from stcvq.faces import detection
from stcvq.media import resample
from stcvq.media.video import read_frames, read_sampled, write_video

log = logging.getLogger(__name__)

STAGE = "crop"


@dataclasses.dataclass
class CropConfig:
    detector: Literal["hog", "cnn"] = "hog"
    upsample: int = 1  # HOG misses 176x144 faces without it
    sample_frames: int = 16  # frames searched for faces, evenly spread over the video
    detect_max_side: int = 400  # frames are shrunk to at most this longer side before detection
    min_face_frames: float = 0.25  # fraction of sampled frames that must show the face
    max_track_jump: float = 1.0  # in median face widths from the median face centre
    enlarge: float = 1.3  # crop side / face-track box side

    def __post_init__(self) -> None:
        check(self.upsample >= 0, "crop.upsample must be >= 0")
        check(self.sample_frames >= 1, "crop.sample_frames must be >= 1")
        check(self.detect_max_side >= 32, "crop.detect_max_side must be >= 32")
        check(0.0 < self.min_face_frames <= 1.0, "crop.min_face_frames must be in (0, 1]")
        check(self.max_track_jump > 0, "crop.max_track_jump must be > 0")
        check(self.enlarge >= 1.0, "crop.enlarge must be >= 1")


@dataclasses.dataclass
class CropJob:
    """What a worker needs: the stage config plus the shared output settings."""

    config: CropConfig
    resolution: int
    out_dir: str


def detect_in_frame(frame: np.ndarray, config: CropConfig) -> list[detection.FaceBox]:
    """Faces of one frame in its own pixel coordinates (detection may run on a shrunk copy)."""
    h, w = frame.shape[:2]
    scale = min(1.0, config.detect_max_side / max(h, w))
    if scale < 1.0:
        small = resample.resize(frame, max(1, round(w * scale)), max(1, round(h * scale)))
        boxes = detection.detect_faces(small, upsample=config.upsample, detector=config.detector)
        return [b.scaled(1.0 / scale) for b in boxes]
    return detection.detect_faces(frame, upsample=config.upsample, detector=config.detector)


def face_track(
    detections: Sequence[tuple[int, list[detection.FaceBox]]], max_track_jump: float
) -> list[tuple[int, detection.FaceBox]]:
    """(frame index, box) of the dominant face: largest per frame, outliers removed."""
    largest = [(i, max(boxes, key=lambda b: (b.area, b.score))) for i, boxes in detections if boxes]
    if not largest:
        return []
    centres = np.array([b.center for _, b in largest])
    median_centre = np.median(centres, axis=0)
    median_width = float(np.median([b.width for _, b in largest]))
    distance = np.linalg.norm(centres - median_centre, axis=1)
    return [item for item, d in zip(largest, distance) if d <= max_track_jump * median_width]


def crop_box_from_track(
    boxes: Sequence[detection.FaceBox], width: int, height: int, enlarge: float
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(face_box, crop_box) as (x0, y0, x1, y1): the box covering every track box, and the
    square crop around it (enlarged, shifted into the frame, shrunk to fit if needed)."""
    if not boxes:
        raise ValueError("crop_box_from_track: empty face track")
    clipped = [b.clip(width, height) for b in boxes]
    fx0, fy0 = min(b.x0 for b in clipped), min(b.y0 for b in clipped)
    fx1, fy1 = max(b.x1 for b in clipped), max(b.y1 for b in clipped)
    cx, cy = (fx0 + fx1) / 2.0, (fy0 + fy1) / 2.0
    side = int(round(enlarge * max(fx1 - fx0, fy1 - fy0)))
    side = max(1, min(side, width, height))  # shrink to the frame's shorter side: no padding
    x0 = int(round(cx - side / 2.0))
    y0 = int(round(cy - side / 2.0))
    x0 = min(max(x0, 0), width - side)  # shift inside the frame
    y0 = min(max(y0, 0), height - side)
    return (fx0, fy0, fx1, fy1), (x0, y0, x0 + side, y0 + side)


def face_proportion(boxes: Sequence[detection.FaceBox], crop_box: tuple[int, int, int, int]) -> float:
    """Mean over frames of (face area inside the crop) / (crop area)."""
    x0, y0, x1, y1 = crop_box
    area = float((x1 - x0) * (y1 - y0))
    values = []
    for b in boxes:
        ix = max(0, min(b.x1, x1) - max(b.x0, x0))
        iy = max(0, min(b.y1, y1) - max(b.y0, y0))
        values.append(ix * iy / area)
    return float(np.mean(values))


def crop_frame(frame: np.ndarray, crop_box: tuple[int, int, int, int], resolution: int) -> np.ndarray:
    x0, y0, x1, y1 = crop_box
    # integer area/cubic resampling: cv2's goes through IPP, whose bytes depend on the CPU
    return resample.resize(frame[y0:y1, x0:x1], resolution, resolution)


def measure_crop(row: Row, job: CropJob) -> Row:
    config = job.config
    path = Path(row["raw_path"])
    indices, frames = read_sampled(path, config.sample_frames, num_frames=row["num_frames"])
    detections = [(i, detect_in_frame(f, config)) for i, f in zip(indices, frames)]
    track = face_track(detections, config.max_track_jump)
    values = {
        "crop_sampled_frames": len(indices),
        "face_frames": len(track),
        "face_track": [[i, *b.as_tuple()] for i, b in track],
    }
    row = update(row, values)
    if len(track) < config.min_face_frames * len(indices):
        return drop(row, "no_face", STAGE)
    boxes = [b for _, b in track]
    face_box, crop_box = crop_box_from_track(boxes, row["width"], row["height"], config.enlarge)
    out = Path(job.out_dir) / f"{row['video_id']}.mkv"
    write_video(
        out,
        (crop_frame(f, crop_box, job.resolution) for f in read_frames(path)),
        row["fps_fraction"],
        codec="ffv1",
        pix_fmt="rgb24",
    )
    return update(row, {
        "face_box": list(face_box),
        "crop_box": list(crop_box),
        "crop_side": crop_box[2] - crop_box[0],
        "face_proportion": face_proportion(boxes, crop_box),
        "cropped_path": str(out),
        "cropped_size": job.resolution,
    })


def run_crop(
    rows: Sequence[Row], config: CropConfig, resolution: int, out_dir: str | Path, workers: int = 1
) -> list[Row]:
    """Measure and crop every kept row; cropped videos go to ``out_dir`` (emptied first)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        for old in out_dir.glob("*.mkv"):
            old.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    return run_stage(STAGE, measure_crop, rows, CropJob(config, resolution, str(out_dir)), workers)
