"""Stage I cost: training steps/s and peak memory (tiny and paper profile), global vs factorized
attention (FLOPs of a 24 x 256^2 forward on the meta device, and measured forward wall time).

    .venv/bin/python benchmarks/bench_stage1.py [--paper-frames 4] [--paper-size 256] [--steps 3]

Each measurement runs in a fresh process so its peak RSS (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure_train(profile: str, frames: int, size: int, steps: int, batch: int) -> dict:
    import torch

    from stcvq.nn.vqgan import Stage1Config, Stage1Model

    torch.manual_seed(0)
    cfg = Stage1Config.paper() if profile == "paper" else Stage1Config.tiny()
    model = Stage1Model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, frames, size, size)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        out = model(x)
        loss = (out.reconstruction - x).abs().mean() + out.quantized.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    rate = len(times[1:]) / sum(times[1:])
    return {"profile": profile, "clip": [batch, frames, size, size], "steps_per_s": rate,
            "clips_per_s": rate * batch, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def measure_forward(layout: str, frames: int, size: int, profile: str) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stcvq.nn.vqgan import Stage1Config, Stage1Model

    make = Stage1Config.paper if profile == "paper" else Stage1Config.tiny
    with torch.device("meta"):
        meta = Stage1Model(Stage1Config.paper(attn_layout=layout))
    with FlopCounterMode(display=False) as counter:
        meta(torch.empty(1, 3, 24, 256, 256, device="meta"))
    torch.manual_seed(0)
    model = Stage1Model(make(attn_layout=layout)).eval()
    x = torch.rand(1, 3, frames, size, size)
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        model(x)
        wall = time.perf_counter() - t0
    return {"layout": layout, "paper_params_m": sum(p.numel() for p in meta.parameters()) / 1e6,
            "paper_24x256_tflop": counter.get_total_flops() / 1e12, "wall_clip": [profile, frames, size, size],
            "forward_s": wall, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_part(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--part", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", nargs="*")
    p.add_argument("--paper-frames", type=int, default=4)
    p.add_argument("--paper-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    if a.part is not None:
        kind, *rest = a.part
        if kind == "train":
            print(json.dumps(measure_train(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]))))
        else:
            print(json.dumps(measure_forward(rest[0], int(rest[1]), int(rest[2]), rest[3])))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    tiny = run_part(["train", "tiny", "8", "64", str(max(a.steps, 5)), "4"])
    print("train tiny  :", json.dumps(tiny))
    paper = run_part(["train", "paper", str(a.paper_frames), str(a.paper_size), str(a.steps), "1"])
    print("train paper :", json.dumps(paper))
    print(f"paper / tiny seconds per step: {tiny['steps_per_s'] / paper['steps_per_s']:.1f}x")
    fwd = {layout: run_part(["forward", layout, "8", "128", "paper"]) for layout in ("global", "factorized")}
    for layout, r in fwd.items():
        print(f"forward {layout:10s}:", json.dumps(r))
    g, f = fwd["global"], fwd["factorized"]
    print(f"factorized / global: TFLOP {f['paper_24x256_tflop'] / g['paper_24x256_tflop']:.3f}, "
          f"wall {f['forward_s'] / g['forward_s']:.3f}, params {f['paper_params_m'] / g['paper_params_m']:.3f}")


if __name__ == "__main__":
    main()
