"""DVC stage `crop`: shots, face tracks and one square face crop per track.

Usage: python -m pipeline.crop --manifest-in data/manifests/ingest.parquet --out data/cropped
                               --manifest-out data/manifests/crop.parquet
"""

from __future__ import annotations

import argparse
from typing import Sequence

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.data.curate import CropConfig, read_manifest, run_crop, summary, write_manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-in", required=True, help="manifest read (parquet)")
    parser.add_argument("--out", required=True, help="folder the face crops are written to")
    parser.add_argument("--manifest-out", required=True, help="manifest written (parquet)")
    args = parser.parse_args(argv)
    log = setup_logging("crop")
    params = load_params("crop", "resolution", "workers")
    config = from_dict(CropConfig, params["crop"], where="params.yaml:crop")
    rows = run_crop(read_manifest(args.manifest_in), config, params["resolution"], args.out, workers=params["workers"])
    write_manifest(args.manifest_out, rows)
    log.info("wrote %s: %s", args.manifest_out, summary(rows))


if __name__ == "__main__":
    run_stage(main)
