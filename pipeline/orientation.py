"""DVC stage `orientation`: drop side faces (68-landmark side ratio)."""

from __future__ import annotations

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.curate import OrientationConfig, run_orientation, read_manifest, summary, write_manifest

IN = "data/manifests/crop.parquet"
OUT = "data/manifests/orientation.parquet"


def main() -> None:
    log = setup_logging("orientation")
    params = load_params("orientation", "workers")
    config = from_dict(OrientationConfig, params["orientation"], where="params.yaml:orientation")
    rows = run_orientation(read_manifest(IN), config, workers=params["workers"])
    write_manifest(OUT, rows)
    log.info("wrote %s: %s", OUT, summary(rows))


if __name__ == "__main__":
    run_stage(main)
