"""All five curation stages in one call (tests, benchmarks, a CLI); DVC runs them one by one.

``curate`` runs ingest -> crop -> orientation -> text -> motion exactly as the DVC stages do
and returns each stage's rows, so a caller can check or time any intermediate manifest.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from stcvq.data.curate.crop import CropConfig, run_crop
from stcvq.data.curate.ingest import IngestConfig, run_ingest
from stcvq.data.curate.manifest import Row
from stcvq.data.curate.motion import MotionConfig, run_motion
from stcvq.data.curate.orientation import OrientationConfig, run_orientation
from stcvq.data.curate.text import TextConfig, run_text

STAGES = ("ingest", "crop", "orientation", "text", "motion")


@dataclasses.dataclass
class CurationConfig:
    ingest: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    crop: CropConfig = dataclasses.field(default_factory=CropConfig)
    orientation: OrientationConfig = dataclasses.field(default_factory=OrientationConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    motion: MotionConfig = dataclasses.field(default_factory=MotionConfig)
    resolution: int = 64
    workers: int = 1


def curate(
    config: CurationConfig,
    raw_dir: str | Path = "data/raw",
    cropped_dir: str | Path = "data/cropped",
    on_stage: Callable[[str, list[Row], float], None] | None = None,
) -> dict[str, list[Row]]:
    """Rows after each stage, keyed by stage name; ``on_stage(name, rows, seconds)`` after each."""
    out: dict[str, list[Row]] = {}
    steps = {
        "ingest": lambda _: run_ingest(config.ingest, raw_dir, config.workers),
        "crop": lambda rows: run_crop(rows, config.crop, config.resolution, cropped_dir, config.workers),
        "orientation": lambda rows: run_orientation(rows, config.orientation, config.workers),
        "text": lambda rows: run_text(rows, config.text, config.workers),
        "motion": lambda rows: run_motion(rows, config.motion, config.workers),
    }
    rows: list[Row] = []
    for name in STAGES:
        start = time.perf_counter()
        rows = steps[name](rows)
        out[name] = rows
        if on_stage is not None:
            on_stage(name, rows, time.perf_counter() - start)
    return out
