"""Stage I training step of the paper profile: seconds, peak RSS, FLOPs, FLOP/s over GEMM.

    .venv/bin/python -m benchmarks.bench_stage1 --paper-frames 24 --paper-size 256 --steps 1
    .venv/bin/python -m benchmarks.bench_stage1 --paper-frames 8 --paper-size 128 --configs fp32,fp32-ckpt

One step is forward + backward + AdamW update of ``Stage1Config.paper()`` (the published
network; ``--layout stcvq`` for stcvq's own) on one clip, with a reconstruction L1 plus the
codebook losses. Each configuration runs in a fresh process, so its peak RSS (ru_maxrss) is its
own: ``fp32`` or ``bf16`` (CPU autocast), then any of ``-gemm`` (attention backward as blocked
matrix products), ``-ckpt`` (activation checkpointing per encoder/decoder block) and ``-cl``
(channels-last 3D); plain ``fp32`` is what the training loop runs by default. A process times one warm-up step and
then ``--steps`` steps, and measures a float32 (or bf16) 2048^3 GEMM right after them: the
machine's attainable FLOP/s in the same run. FLOPs are counted by torch's FlopCounterMode on
the meta device, where attention decomposes into matrix products (on CPU the fused attention
kernels are not counted).

At 24 x 256^2 on 2 threads a step takes one to three minutes, and each configuration runs two
(warm-up and one timed): the default six take about 20-25 minutes. ``--bf16-loss-steps N``
adds the loss difference of bf16 against float32 after N steps of the embedded-default Stage I
(8 x 64^2, batch 4). ``--profile N`` runs one more step under torch.profiler after the timed
ones and adds its N largest ops by self CPU time (seconds, share of the step, calls) to each
configuration's line: where the step goes, without touching the timed figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from stcvq.inference.bench import gemm_flops_per_s, peak_rss_gib
from stcvq.nn.runtime import autocast
from stcvq.nn.vqgan import Stage1Config, Stage1Model

CONFIGS = ("fp32", "fp32-gemm", "fp32-cl", "fp32-ckpt", "bf16", "bf16-ckpt")


def _loss(model: Stage1Model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return (out.reconstruction.float() - x).abs().mean() + out.quantized.loss


def step_flops(config: Stage1Config, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward + backward, counted on the meta device."""
    with torch.device("meta"):
        model = Stage1Model(config)
    with FlopCounterMode(display=False) as counter:
        _loss(model, torch.empty(shape, device="meta")).backward()
    return counter.get_total_flops()


def measure_step(config_name: str, layout: str, frames: int, size: int, steps: int, device: str = "cpu",
                 profile_top: int = 0) -> dict:
    """One configuration's seconds per step, peak RSS and FLOP/s over the same-run GEMM
    (``profile_top`` > 0: plus the largest ops of one more, profiled, step)."""
    precision = config_name.split("-")[0]
    options = config_name.split("-")[1:]
    config = Stage1Config.paper(layout=layout)
    shape = (1, 3, frames, size, size)
    torch.manual_seed(0)
    model = Stage1Model(config).set_activation_checkpointing("ckpt" in options).set_channels_last("cl" in options)
    model = model.set_gemm_attention_backward("gemm" in options).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=7e-5)
    x = torch.rand(shape, device=device)

    def step() -> float:
        with autocast(device, precision):
            loss = _loss(model, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        return float(loss.detach())

    times, cpu_times, losses = [], [], []
    for _ in range(steps + 1):  # the first step warms up allocator and kernels
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        losses.append(step())
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    top_ops = profile_ops(step, profile_top) if profile_top else None
    seconds, cpu_seconds = sum(times[1:]) / steps, sum(cpu_times[1:]) / steps
    flops = step_flops(config, shape)
    gemm_dtype = {"fp32": "float32"}.get(precision, precision)
    gemm = gemm_flops_per_s(gemm_dtype, device)
    if device == "cpu":
        # Per CPU-second of this process: the same ratio, less sensitive to other processes
        # taking the cores (wall time counts their share, CPU time does not).
        gemm_cpu = gemm_flops_per_s(gemm_dtype, device, clock=time.process_time)
        extra = {"cpu_seconds_per_step": cpu_seconds, "fraction_of_gemm_cpu_time": flops / cpu_seconds / gemm_cpu}
    else:
        extra = {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {**extra, "config": config_name, "layout": layout, "clip": [frames, size, size],
            "threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in model.parameters()),
            "seconds_per_step": seconds, "warmup_s": times[0], "peak_rss_gib": peak_rss_gib(),
            "step_tflop": flops / 1e12, "achieved_gflop_per_s": flops / seconds / 1e9, "gemm_gflop_per_s": gemm / 1e9,
            "fraction_of_gemm": flops / seconds / gemm, "losses": losses,
            **({"profile": top_ops} if top_ops is not None else {})}


def profile_ops(step: Callable[[], float], top: int) -> list[dict]:
    """The ``top`` ops of one ``step()`` by self CPU time (backward ops included, by their
    autograd names), with their share of the profiled step's total self time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 2),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:top]]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bf16_loss_difference(steps: int) -> dict:
    """Loss after ``steps`` AdamW steps of the embedded-default Stage I in float32 and under
    bf16 autocast, same seed and data."""
    config = Stage1Config.tiny(num_codes_spatial=256, num_codes_temporal=256, codebook_init="normal")
    clips = torch.rand(4, 3, 8, 64, 64, generator=torch.Generator().manual_seed(0))
    losses, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Stage1Model(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        for _ in range(steps):
            with autocast("cpu", precision):
                loss = _loss(model, clips)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds[precision] = time.perf_counter() - start
        with torch.no_grad():
            losses[precision] = float(_loss(model.eval(), clips))
    return {"check": "bf16_vs_fp32_embedded_default", "steps": steps, "loss_fp32": losses["fp32"],
            "loss_bf16": losses["bf16"], "relative_difference": abs(losses["bf16"] - losses["fp32"]) / losses["fp32"],
            "seconds_fp32": seconds["fp32"], "seconds_bf16": seconds["bf16"]}


def run_in_subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_stage1", "--part", *args],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"config": args[0], "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper-frames", type=int, default=24)
    p.add_argument("--paper-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up step")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {CONFIGS} (+ -cl)")
    p.add_argument("--layout", choices=("reference", "stcvq"), default="reference")
    p.add_argument("--bf16-loss-steps", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="add the N largest ops of one profiled step")
    p.add_argument("--part", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part is not None:
        name, layout, frames, size, steps, top = a.part
        print(json.dumps(measure_step(name, layout, int(frames), int(size), int(steps), profile_top=int(top))))
        return
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    results = {}
    for name in filter(None, a.configs.split(",")):
        part = [name, a.layout, str(a.paper_frames), str(a.paper_size), str(a.steps), str(a.profile)]
        results[name] = run_in_subprocess(part)
        print(json.dumps(results[name]), flush=True)
    base = results.get("fp32", {})
    for name, r in results.items():
        if name != "fp32" and "seconds_per_step" in r and "seconds_per_step" in base:
            print(json.dumps({"config": name, "time_vs_fp32": r["seconds_per_step"] / base["seconds_per_step"],
                              "peak_rss_vs_fp32": r["peak_rss_gib"] / base["peak_rss_gib"]}), flush=True)
    if a.bf16_loss_steps:
        print(json.dumps(bf16_loss_difference(a.bf16_loss_steps)), flush=True)


if __name__ == "__main__":
    main()
