"""DVC stage `crop`: face track, face proportion and square face crops (data/cropped/)."""

from __future__ import annotations

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.curate import CropConfig, run_crop, read_manifest, summary, write_manifest

IN = "data/manifests/ingest.parquet"
OUT_DIR = "data/cropped"
OUT = "data/manifests/crop.parquet"


def main() -> None:
    log = setup_logging("crop")
    params = load_params("crop", "resolution", "workers")
    config = from_dict(CropConfig, params["crop"], where="params.yaml:crop")
    rows = run_crop(read_manifest(IN), config, params["resolution"], OUT_DIR, workers=params["workers"])
    write_manifest(OUT, rows)
    log.info("wrote %s: %s", OUT, summary(rows))


if __name__ == "__main__":
    run_stage(main)
