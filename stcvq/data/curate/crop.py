"""Stage ``crop``: one square face video per (shot, face track) of each raw video.

Each raw video is cut into shots (:func:`stcvq.faces.shots.detect_shots`) and its faces are
tracked within each shot (:func:`stcvq.faces.tracks.find_tracks`): the same shots, detections,
linking and smoothing as ``stcvq enhance``. Every track becomes a manifest row of its own
(``video_id`` = ``<raw id>-s<shot>-t<track>``, a valid WebDataset key) carrying ``shot``,
``track``, its frame range, its real detections (``face_track``) and the square cropped from
each frame (``crop_squares``). A track shorter than ``min_frames`` is dropped as ``too_short``,
one whose median crop side is below ``min_crop_side`` as ``too_small``; a video with no track is
one row dropped as ``no_face``. Later filters judge each track row on its own.

Framing: the smoothed moving square of each frame, the rule enhance restores with (``enlarge`` x
the smoothed face side around the smoothed face centre). A fixed box per track would have to
cover the face's whole path, so a face that moves or zooms would sit small and off-centre in
the training crop, in a framing enhance never feeds the model; the moving square gives training
and inference the same face size and position. Where the square leaves the frame it is moved
back inside, and shrunk to the frame's shorter side if larger
(:func:`stcvq.faces.tracks.fit_square`): training crops never contain synthetic padding.

Each frame's square is resampled to ``resolution`` x ``resolution`` (area averaging when
shrinking, bicubic when enlarging, in integer maths: :mod:`stcvq.media.resample`) and written as
lossless FFV1 in RGB (.mkv): later stages read exactly these pixels.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from stcvq.config import check
from stcvq.data.curate.manifest import Row, drop, update
from stcvq.data.curate.runner import run_stage
from stcvq.faces.detection import FaceBox
from stcvq.faces.shots import ShotConfig, detect_shots
from stcvq.faces.tracks import FaceTrack, TrackConfig, detection_frames, find_tracks, fit_square
from stcvq.media import resample
from stcvq.media.video import read_frames, write_video

log = logging.getLogger(__name__)

STAGE = "crop"


@dataclasses.dataclass
class CropConfig:
    shots: ShotConfig = dataclasses.field(default_factory=ShotConfig)
    faces: TrackConfig = dataclasses.field(default_factory=TrackConfig)  # the same defaults as enhance
    min_frames: int = 24  # a track shorter than this is dropped (too_short): no training clip fits
    min_crop_side: int = 64  # median crop side in raw pixels below this is dropped (too_small): upscaled blur

    def __post_init__(self) -> None:
        check(self.min_frames >= 1, f"crop.min_frames must be >= 1, got {self.min_frames}")
        check(self.min_crop_side >= 1, f"crop.min_crop_side must be >= 1, got {self.min_crop_side}")


@dataclasses.dataclass
class CropJob:
    """What a worker needs: the stage config plus the shared output settings."""

    config: CropConfig
    resolution: int
    out_dir: str


def track_id(video_id: str, shot: int, track: int) -> str:
    """The row id of a track: ``<video id>-s<shot>-t<track>`` (letters, digits, ``_-``: a WebDataset key)."""
    return f"{video_id}-s{shot}-t{track}"


def fitted_squares(track: FaceTrack, width: int, height: int) -> np.ndarray:
    """(n, 3) int32 x0, y0, side of the track's squares moved/shrunk into the frame."""
    return np.array([fit_square(int(x), int(y), int(s), width, height) for x, y, s in track.squares], dtype=np.int32)


def covering_box(boxes: Sequence[tuple[int, int, int, int]]) -> list[int]:
    """[x0, y0, x1, y1] of the smallest box covering ``boxes``."""
    array = np.asarray(boxes)
    return [int(array[:, 0].min()), int(array[:, 1].min()), int(array[:, 2].max()), int(array[:, 3].max())]


def face_proportion(faces: Sequence[tuple[int, FaceBox]], squares: np.ndarray, first: int) -> float:
    """Mean over detected frames of (face area inside that frame's square) / (square area)."""
    values = []
    for index, b in faces:
        x0, y0, side = (int(v) for v in squares[index - first])
        ix = max(0, min(b.x1, x0 + side) - max(b.x0, x0))
        iy = max(0, min(b.y1, y0 + side) - max(b.y0, y0))
        values.append(ix * iy / float(side * side))
    return float(np.mean(values)) if values else 0.0


def crop_frames(frames: Iterator[np.ndarray], squares: np.ndarray, resolution: int) -> Iterator[np.ndarray]:
    """Each frame's square resampled to ``resolution`` (integer maths: same bytes on every CPU)."""
    for frame, (x0, y0, side) in zip(frames, squares):
        yield resample.resize(frame[y0:y0 + side, x0:x0 + side], resolution, resolution)


def track_row(row: Row, track: FaceTrack, shots_list: list[list[int]], job: CropJob) -> Row:
    """The manifest row of one track, its crop written when the track is long and large enough."""
    config = job.config
    squares = fitted_squares(track, row["width"], row["height"])
    faces = track.face_boxes()
    values = {
        "video_id": track_id(row["video_id"], track.shot, track.track),
        "source_video": row["video_id"],
        "shots": shots_list,
        "shot": track.shot,
        "shot_frames": shots_list[track.shot],
        "track": track.track,
        "track_frames": [track.first, track.end],
        "num_frames": track.num_frames,
        "face_frames": len(faces),
        "face_track": [[i, *b.as_tuple()] for i, b in faces],
        "face_box": covering_box([b.as_tuple() for _, b in faces]),
        "crop_squares": squares.tolist(),
        "crop_box": covering_box([(x, y, x + s, y + s) for x, y, s in squares]),
        "crop_side": int(np.median(squares[:, 2])),
        "face_proportion": face_proportion(faces, squares, track.first),
    }
    out = update(row, values)
    if track.num_frames < config.min_frames:
        return drop(out, f"too_short: {track.num_frames} frames < crop.min_frames {config.min_frames}", STAGE)
    if values["crop_side"] < config.min_crop_side:
        return drop(out, f"too_small: crop side {values['crop_side']} px < crop.min_crop_side {config.min_crop_side}",
                    STAGE)
    path = Path(job.out_dir) / f"{values['video_id']}.mkv"
    frames = read_frames(row["raw_path"], start=track.first, stop=track.end)
    write_video(path, crop_frames(frames, squares, job.resolution), row["fps_fraction"], codec="ffv1",
                pix_fmt="rgb24")
    return update(out, {"cropped_path": str(path), "cropped_size": job.resolution})


def measure_crop(row: Row, job: CropJob) -> list[Row]:
    """The rows of one raw video: one per face track, or the video dropped as ``no_face``."""
    config = job.config
    path = Path(row["raw_path"])
    shots = detect_shots(path, config.shots, num_frames=row["num_frames"])
    tracks = find_tracks(path, shots, config.faces)
    shots_list = [[s.first, s.end] for s in shots]
    searched = sum(len(detection_frames(s, config.faces.detect_every)) for s in shots)
    row = update(row, {"source_video": row["video_id"], "shots": shots_list, "crop_sampled_frames": searched})
    if not tracks:
        return [drop(row, "no_face", STAGE)]
    return [track_row(row, track, shots_list, job) for track in tracks]


def run_crop(
    rows: Sequence[Row], config: CropConfig, resolution: int, out_dir: str | Path, workers: int = 1
) -> list[Row]:
    """Track and crop every kept row; cropped videos go to ``out_dir`` (emptied first)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        for old in out_dir.glob("*.mkv"):
            old.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    return run_stage(STAGE, measure_crop, rows, CropJob(config, resolution, str(out_dir)), workers)
