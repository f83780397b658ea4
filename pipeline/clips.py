"""DVC stage `clips`: fixed-length clips of the kept videos and their train/val/test split.

Usage: python -m pipeline.clips --manifest data/manifest.parquet --out data/clips.parquet
                                --metrics metrics/clips.json
Writes the clip table (one row per clip) and the metrics (clips per split, the split mode,
every skipped video with its reason).
"""

from __future__ import annotations

import argparse
from typing import Sequence

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.data.clips import ClipConfig, plan_clips, read_manifest
from stcvq.io import atomic_path, write_json


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="the curated manifest read (parquet)")
    parser.add_argument("--out", required=True, help="clip table written (parquet)")
    parser.add_argument("--metrics", required=True, help="clip counts written (JSON)")
    args = parser.parse_args(argv)
    log = setup_logging("clips")
    params = load_params("clips", "resolution", "seed")
    config = from_dict(ClipConfig, {**params["clips"], "resolution": params["resolution"], "seed": params["seed"]},
                       where="params.yaml:clips")
    clips, skipped, summary = plan_clips(read_manifest(args.manifest), config)
    with atomic_path(args.out) as tmp:
        clips.to_parquet(tmp, index=False)
    write_json(args.metrics, summary)
    log.info("wrote %s: %s clips (%s split); %d video(s) or range(s) skipped", args.out, summary["clips"],
             summary["split_mode"], len(skipped))


if __name__ == "__main__":
    run_stage(main)
