"""DVC stage `clips`: fixed-length clips of the kept videos and their train/val/test split.

Writes data/clips.parquet (one row per clip) and metrics/clips.json (clips per split, the split
mode, every skipped video with its reason).
"""

from __future__ import annotations

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.clips import ClipConfig, plan_clips, read_manifest
from stcvq.config import from_dict
from stcvq.io import atomic_path, write_json

IN = "data/manifest.parquet"
OUT = "data/clips.parquet"
METRICS = "metrics/clips.json"


def main() -> None:
    log = setup_logging("clips")
    params = load_params("clips", "resolution", "seed")
    config = from_dict(ClipConfig, {**params["clips"], "resolution": params["resolution"], "seed": params["seed"]},
                       where="params.yaml:clips")
    clips, skipped, summary = plan_clips(read_manifest(IN), config)
    with atomic_path(OUT) as tmp:
        clips.to_parquet(tmp, index=False)
    write_json(METRICS, summary)
    log.info("wrote %s: %s clips (%s split); %d video(s) or range(s) skipped", OUT, summary["clips"], summary["split_mode"], len(skipped))


if __name__ == "__main__":
    run_stage(main)
