"""DVC stage `ingest`: raw videos into data/raw/ and the first manifest rows."""

from __future__ import annotations

from pipeline.common import load_params, setup_logging
from stcvq.config import ConfigError, from_dict
from stcvq.curate import IngestConfig, run_ingest, summary, write_manifest

RAW_DIR = "data/raw"
OUT = "data/manifests/ingest.parquet"


def main() -> None:
    log = setup_logging("ingest")
    params = load_params("ingest", "workers")
    try:
        config = from_dict(IngestConfig, params["ingest"], where="params.yaml:ingest")
        rows = run_ingest(config, RAW_DIR, workers=params["workers"])
    except ConfigError as err:  # a bad param or mapping file: one line, not a traceback
        raise SystemExit(f"ingest: {err}") from None
    write_manifest(OUT, rows)
    log.info("wrote %s: %s", OUT, summary(rows))


if __name__ == "__main__":
    main()
