"""DVC stage `synthesize@<task>`: degrade every clip for one task and write its shards.

Usage: python -m pipeline.synthesize {bfvr|deflicker|deflicker-pixel}
Writes data/shards/<task>/{split}-<task>-%06d.tar + {split}-<task>.json (index) and
metrics/synthesis-<task>.json (clips per split, backend, skipped clips with reasons).
The folder is built beside the target and renamed into place, so a killed run leaves nothing.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.degrade import TASKS, SynthesisConfig, WeightsUnavailable
from stcvq.io import write_json
from stcvq.shards import ShardConfig
from stcvq.synthesize import write_task_shards

CLIPS = "data/clips.parquet"


def main(task: str) -> None:
    log = setup_logging(f"synthesize@{task}")
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; known: {list(TASKS)}")
    params = load_params("synthesize", "shards", "seed", "workers", "clips")
    section = params["synthesize"].get(task, {})
    synth = from_dict(SynthesisConfig, {task.replace("-", "_"): section}, where="params.yaml:synthesize")
    shard_cfg = from_dict(ShardConfig, params["shards"], where="params.yaml:shards")
    clips = pd.read_parquet(CLIPS)
    out = Path("data/shards") / task
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private
    try:
        summary = write_task_shards(clips, task, synth, shard_cfg, staging, seed=params["seed"], workers=params["workers"],
                                    splits=list(params["clips"].get("splits") or []))
    except WeightsUnavailable as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(f"synthesize@{task}: {err}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    write_json(f"metrics/synthesis-{task}.json", summary)
    log.info("wrote %s: %s clips per split, backend %s, %d skipped", out, summary["clips"], summary["backend"], len(summary["skipped"]))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    run_stage(main, sys.argv[1])
