"""`stcvq` command line: enhance videos, and measure what enhancing costs.

    stcvq enhance INPUT -o OUTPUT --task bfvr|deflicker|deflicker-pixel [--model DIR]
    stcvq bench enhance --profile paper|default --frames N --size S [--attention ...] [--dtype ...]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import sys
from pathlib import Path

TASKS = ("bfvr", "deflicker", "deflicker-pixel")
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"}
log = logging.getLogger("stcvq")


def resolve_device(name: str) -> str:
    import torch

    if name != "auto":
        if name == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        if name == "mps" and not torch.backends.mps.is_available():
            raise SystemExit("--device mps: MPS is not available")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_model(model_dir: Path, device: str):
    """The trained Stage II model of ``model_dir`` (model.safetensors + config.json)."""
    from stcvq.stage2 import Stage2Model

    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        raise SystemExit(
            f"{model_dir}: no trained model here (needs config.json and model.safetensors); "
            "train one with `dvc repro` or pass --model DIR"
        )
    return Stage2Model.from_pretrained(model_dir).to(device).eval()


def _enhance(args: argparse.Namespace) -> int:
    from stcvq.enhance import StreamConfig, enhance_file
    from stcvq.video import VideoError, is_frame_folder

    device = resolve_device(args.device)
    model_dir = Path(args.model or f"models/stage2-{args.task}")
    model = load_model(model_dir, device)
    if getattr(model, "task", args.task) not in (None, args.task):
        raise SystemExit(f"{model_dir}: this model was trained for task '{model.task}', not '{args.task}'")
    dtype = args.dtype or ("bf16" if device == "cuda" else "float32")
    config = StreamConfig(
        overlap=args.overlap, batch_size=args.batch_size, device=device, dtype=dtype, crf=args.crf,
        face_crop=args.face_crop,
    )
    src, dst = Path(args.input), Path(args.output)
    if src.is_dir() and not is_frame_folder(src):  # a folder of videos; a folder of frames is one video
        jobs = [(p, dst / p.name) for p in sorted(src.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]
        if not jobs:
            raise SystemExit(f"{src}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
    else:
        if not src.exists():
            raise SystemExit(f"{src}: no such file")
        jobs = [(src, dst)]
    failed = []
    for job_src, job_dst in jobs:
        try:
            report = enhance_file(job_src, job_dst, model, config, force=args.force)
            print(json.dumps(vars(report)), flush=True)
        except (VideoError, FileExistsError, ValueError) as err:
            log.error("%s", err)
            failed.append((str(job_src), str(err)))
    if failed:
        log.error("%d of %d videos failed", len(failed), len(jobs))
        return 1
    return 0


def _bench_enhance(args: argparse.Namespace) -> int:
    from stcvq.bench import bench_enhance

    result = bench_enhance(
        profile=args.profile, task=args.task, frames=args.frames, size=args.size, attention=args.attention,
        token_layout=args.token_layout, dtype=args.dtype, device=resolve_device(args.device), repeats=args.repeats,
    )
    print(json.dumps(result), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stcvq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    enhance = commands.add_parser("enhance", help="restore or de-flicker a video, or a folder of videos")
    enhance.add_argument("input", help="a video file, a folder of PNG/JPG frames (rate in its fps.txt), or a folder of videos")
    enhance.add_argument("-o", "--output", required=True, help="output file (or folder, for a folder input)")
    enhance.add_argument("--task", choices=TASKS, required=True)
    enhance.add_argument("--model", help="trained Stage II folder (default: models/stage2-TASK)")
    enhance.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    enhance.add_argument("--dtype", choices=("float32", "bf16", "fp16"), help="default: bf16 on CUDA, else float32")
    enhance.add_argument("--face-crop", action="store_true", help="enhance a tracked face square, paste it back")
    enhance.add_argument("--overlap", type=int, default=4, help="frames blended between windows (default 4)")
    enhance.add_argument("--batch-size", type=int, default=1, help="windows per model call")
    enhance.add_argument("--crf", type=int, default=15, help="x264 quality of the output (default 15)")
    enhance.add_argument("--force", action="store_true", help="overwrite an existing output")
    enhance.set_defaults(run=_enhance)

    bench = commands.add_parser("bench", help="measure cost with random weights")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    be = bench_commands.add_parser("enhance", help="time enhancing a synthetic clip; prints one JSON object")
    be.add_argument("--profile", choices=("paper", "default"), default="default")
    be.add_argument("--task", choices=TASKS, default="bfvr")
    be.add_argument("--frames", type=int, default=None, help="input frames (default: the model's clip length)")
    be.add_argument("--size", type=int, default=None, help="model input side (default: the profile's)")
    be.add_argument("--attention", choices=("global", "factorized"), default=None, help="autoencoder attention layout")
    be.add_argument("--token-layout", choices=("frame", "clip"), default=None, help="lookup transformer layout")
    be.add_argument("--dtype", choices=("float32", "bf16", "fp16"), default="float32")
    be.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    be.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up on GPU (best is kept)")
    be.set_defaults(run=_bench_enhance)
    return parser


def tune_cpu_allocator(mmap_threshold: int = 4 << 20) -> None:
    """Allocator settings for streaming inference; call before torch is imported.

    Transparent huge pages for torch's large allocations (torch reads THP_MEM_ALLOC_ENABLE at
    its first allocation): a fresh multi-GB feature map is otherwise first touched 4 KiB page
    by page, 3x slower. A fixed glibc mmap threshold: by default glibc raises it after large
    frees, mid-size buffers then stay on the heap, and peak RSS of a 240-frame video was 1.23x
    that of a 24-frame one (0.96-1.04x with it fixed; README, "Enhancing a video"). Settings the
    user made in the environment win."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, mmap_threshold)  # -3: M_MMAP_THRESHOLD
        except (OSError, AttributeError):  # not glibc
            pass


def main(argv: list[str] | None = None) -> int:
    tune_cpu_allocator()  # THP only takes effect if torch is not imported yet
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
