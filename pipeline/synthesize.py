"""DVC stage `synthesize@<task>`: degrade every clip for one task and write its shards.

Usage: python -m pipeline.synthesize {bfvr|deflicker|deflicker-pixel} --clips data/clips.parquet
                                     --out data/shards/<task> --metrics metrics/synthesis-<task>.json
Writes <out>/{split}-<task>-%06d.tar + {split}-<task>.json (index) and the metrics (clips per
split, backend, skipped clips with reasons). The folder is built beside the target and renamed
into place, so a killed run leaves nothing.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import pandas as pd

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.data.degrade import SynthesisConfig, WeightsUnavailable
from stcvq.data.shards import ShardConfig
from stcvq.data.synthesize import write_task_shards
from stcvq.io import atomic_folder, write_json
from stcvq.tasks import TASKS


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task")
    parser.add_argument("--clips", required=True, help="clip table read (parquet)")
    parser.add_argument("--out", required=True, help="shard folder written")
    parser.add_argument("--metrics", required=True, help="synthesis summary written (JSON)")
    args = parser.parse_args(argv)
    task = args.task
    log = setup_logging(f"synthesize@{task}")
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; known: {list(TASKS)}")
    params = load_params("synthesize", "shards", "seed", "workers", "clips")
    section = params["synthesize"].get(task, {})
    synth = from_dict(SynthesisConfig, {task.replace("-", "_"): section}, where="params.yaml:synthesize")
    shard_cfg = from_dict(ShardConfig, params["shards"], where="params.yaml:shards")
    clips = pd.read_parquet(args.clips)
    try:
        with atomic_folder(args.out) as staging:
            summary = write_task_shards(clips, task, synth, shard_cfg, staging, seed=params["seed"],
                                        workers=params["workers"], splits=list(params["clips"].get("splits") or []))
    except WeightsUnavailable as err:
        raise SystemExit(f"synthesize@{task}: {err}") from None
    write_json(args.metrics, summary)
    log.info("wrote %s: %s clips per split, backend %s, %d skipped", args.out, summary["clips"], summary["backend"],
             len(summary["skipped"]))


if __name__ == "__main__":
    run_stage(main)
