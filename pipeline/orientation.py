"""DVC stage `orientation`: drop side faces (68-landmark side ratio).

Usage: python -m pipeline.orientation --manifest-in data/manifests/crop.parquet
                                      --manifest-out data/manifests/orientation.parquet
"""

from __future__ import annotations

import argparse
from typing import Sequence

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.data.curate import OrientationConfig, read_manifest, run_orientation, summary, write_manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-in", required=True, help="manifest read (parquet)")
    parser.add_argument("--manifest-out", required=True, help="manifest written (parquet)")
    args = parser.parse_args(argv)
    log = setup_logging("orientation")
    params = load_params("orientation", "workers")
    config = from_dict(OrientationConfig, params["orientation"], where="params.yaml:orientation")
    rows = run_orientation(read_manifest(args.manifest_in), config, workers=params["workers"])
    write_manifest(args.manifest_out, rows)
    log.info("wrote %s: %s", args.manifest_out, summary(rows))


if __name__ == "__main__":
    run_stage(main)
