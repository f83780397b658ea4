"""DVC stage `ingest`: raw videos into the raw folder and the first manifest rows.

Usage: python -m pipeline.ingest --raw data/raw --manifest-out data/manifests/ingest.parquet
"""

from __future__ import annotations

import argparse
from typing import Sequence

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.data.curate import IngestConfig, run_ingest, summary, write_manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", required=True, help="folder the raw videos are written to")
    parser.add_argument("--manifest-out", required=True, help="manifest written (parquet)")
    args = parser.parse_args(argv)
    log = setup_logging("ingest")
    params = load_params("ingest", "workers")
    config = from_dict(IngestConfig, params["ingest"], where="params.yaml:ingest")
    rows = run_ingest(config, args.raw, workers=params["workers"])  # a bad mapping file: ConfigError, one line
    write_manifest(args.manifest_out, rows)
    log.info("wrote %s: %s", args.manifest_out, summary(rows))


if __name__ == "__main__":
    run_stage(main)
