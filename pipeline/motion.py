"""DVC stage `motion`: motion intensity; writes the final manifest and the curation metrics
(kept, dropped, count per reason).

Usage: python -m pipeline.motion --manifest-in data/manifests/text.parquet
                                 --manifest-out data/manifest.parquet --metrics metrics/curation.json
"""

from __future__ import annotations

import argparse
from typing import Sequence

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.data.curate import MotionConfig, read_manifest, run_motion, summary, write_manifest
from stcvq.io import write_json


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-in", required=True, help="manifest read (parquet)")
    parser.add_argument("--manifest-out", required=True, help="the final manifest written (parquet)")
    parser.add_argument("--metrics", required=True, help="curation counts written (JSON)")
    args = parser.parse_args(argv)
    log = setup_logging("motion")
    params = load_params("motion", "workers")
    config = from_dict(MotionConfig, params["motion"], where="params.yaml:motion")
    rows = run_motion(read_manifest(args.manifest_in), config, workers=params["workers"])
    write_manifest(args.manifest_out, rows)
    stats = summary(rows)
    write_json(args.metrics, stats)
    log.info("wrote %s and %s: %s", args.manifest_out, args.metrics, stats)


if __name__ == "__main__":
    run_stage(main)
