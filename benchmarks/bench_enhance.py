"""Enhancement cost against issue 6's targets, each run in a fresh process (clean peak RSS).

    .venv/bin/python benchmarks/bench_enhance.py            # embedded default: fps, RSS 1x vs 10x
    .venv/bin/python benchmarks/bench_enhance.py --paper    # + 24 x 512^2, global/factorized, fp32/bf16

Prints one JSON line per run, then the ratios the targets are stated in, all from this run:
peak RSS of a 10x longer input over the 1x input (target <= 1.10), achieved FLOP/s over the
same-dtype GEMM FLOP/s (target >= 0.70, paper profile), bf16 over float32 wall time
(target <= 0.5). The paper profile takes minutes per run on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def bench(*args: str) -> dict:
    cmd = [sys.executable, "-m", "stcvq.cli", "bench", "enhance", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", action="store_true", help="also the paper profile at 24 x 512^2")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    ratios = {}
    one = bench("--profile", "default", "--frames", "24", "--device", args.device)
    ten = bench("--profile", "default", "--frames", "240", "--device", args.device)
    ratios["default_frames_per_second"] = ten["frames_per_second"]
    ratios["default_rss_10x_over_1x"] = ten["peak_rss_gib"] / one["peak_rss_gib"]
    if args.paper:
        base = ("--profile", "paper", "--frames", "24", "--size", "512", "--device", args.device)
        for attention in ("global", "factorized"):
            fp32 = bench(*base, "--attention", attention, "--dtype", "float32")
            ratios[f"paper_{attention}_fp32_seconds"] = fp32["seconds"]
            ratios[f"paper_{attention}_fp32_peak_rss_gib"] = fp32["peak_rss_gib"]
            ratios[f"paper_{attention}_fp32_fraction_of_gemm"] = fp32["fraction_of_gemm"]
        bf16 = bench(*base, "--attention", "factorized", "--dtype", "bf16")
        ratios["paper_factorized_bf16_over_fp32_seconds"] = bf16["seconds"] / ratios["paper_factorized_fp32_seconds"]
    print(json.dumps({"ratios": ratios}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
