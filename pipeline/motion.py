"""DVC stage `motion`: motion intensity; writes the final data/manifest.parquet and
metrics/curation.json (kept, dropped, count per reason)."""

from __future__ import annotations

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.curate import MotionConfig, run_motion, read_manifest, summary, write_manifest
from stcvq.io import write_json

IN = "data/manifests/text.parquet"
OUT = "data/manifest.parquet"
METRICS = "metrics/curation.json"


def main() -> None:
    log = setup_logging("motion")
    params = load_params("motion", "workers")
    config = from_dict(MotionConfig, params["motion"], where="params.yaml:motion")
    rows = run_motion(read_manifest(IN), config, workers=params["workers"])
    write_manifest(OUT, rows)
    stats = summary(rows)
    write_json(METRICS, stats)
    log.info("wrote %s and %s: %s", OUT, METRICS, stats)


if __name__ == "__main__":
    run_stage(main)
