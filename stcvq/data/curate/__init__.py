"""Curation: raw videos -> a manifest of usable face videos with every measurement.

One module per stage, each with a typed config, one function per filter and a per-video
``measure_*`` that the process-pool runner applies to the kept rows:

    ingest       data/raw/ and the first manifest rows (unreadable / too_short / grayscale)
    crop         shots and face tracks; one square crop per track at the profile resolution
                 (no_face, too_short, too_small)
    orientation  68-landmark side ratio (side_face)
    text         OCR text detection on original frames (text)
    motion       motion intensity of the crop (static, off by default)

The manifest (schema and writer) is :mod:`stcvq.data.curate.manifest`.
"""

from stcvq.data.curate.chain import STAGES, CurationConfig, curate
from stcvq.data.curate.crop import CropConfig, face_proportion, run_crop, track_id
from stcvq.data.curate.ingest import IngestConfig, run_ingest
from stcvq.data.curate.manifest import COLUMNS, SCHEMA, read_manifest, summary, write_manifest
from stcvq.data.curate.motion import MotionConfig, motion_intensity, run_motion
from stcvq.data.curate.orientation import OrientationConfig, is_side_face, run_orientation, side_ratio
from stcvq.data.curate.text import TextConfig, run_text

__all__ = [
    "COLUMNS", "SCHEMA", "STAGES", "CropConfig", "CurationConfig", "curate", "IngestConfig", "MotionConfig",
    "OrientationConfig", "TextConfig",
    "face_proportion", "is_side_face", "motion_intensity",
    "read_manifest", "run_crop", "run_ingest", "run_motion", "run_orientation", "run_text", "side_ratio",
    "summary", "track_id", "write_manifest",
]
