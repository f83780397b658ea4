"""DVC stage `ingest`: raw videos into data/raw/ and the first manifest rows."""

from __future__ import annotations

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.curate import IngestConfig, run_ingest, summary, write_manifest

RAW_DIR = "data/raw"
OUT = "data/manifests/ingest.parquet"


def main() -> None:
    log = setup_logging("ingest")
    params = load_params("ingest", "workers")
    config = from_dict(IngestConfig, params["ingest"], where="params.yaml:ingest")
    rows = run_ingest(config, RAW_DIR, workers=params["workers"])  # a bad mapping file: ConfigError, one line
    write_manifest(OUT, rows)
    log.info("wrote %s: %s", OUT, summary(rows))


if __name__ == "__main__":
    run_stage(main)
