"""Curation: raw videos -> a manifest of usable face videos with every measurement.

One module per stage, each with a typed config, one function per filter and a per-video
``measure_*`` that the process-pool runner applies to the kept rows:

    ingest       data/raw/ and the first manifest rows (unreadable / too_short / grayscale)
    crop         face track, face proportion, square crop at the profile resolution (no_face)
    orientation  68-landmark side ratio (side_face)
    text         OCR text detection on original frames (text)
    motion       motion intensity of the crop (static, off by default)

The manifest (schema and writer) is :mod:`stcvq.curate.manifest`.
"""

from stcvq.curate.crop import CropConfig, crop, crop_box_from_track, face_proportion, face_track
from stcvq.curate.ingest import IngestConfig, ingest
from stcvq.curate.manifest import COLUMNS, SCHEMA, read_manifest, summary, write_manifest
from stcvq.curate.motion import MotionConfig, motion, motion_intensity
from stcvq.curate.orientation import OrientationConfig, is_side_face, orientation, side_ratio
from stcvq.curate.text import TextConfig, text

__all__ = [
    "COLUMNS", "SCHEMA", "CropConfig", "IngestConfig", "MotionConfig", "OrientationConfig", "TextConfig",
    "crop", "crop_box_from_track", "face_proportion", "face_track", "ingest", "is_side_face", "motion",
    "motion_intensity", "orientation", "read_manifest", "side_ratio", "summary", "text", "write_manifest",
]
