"""Stage II training step of the paper profile: seconds, peak RSS, FLOPs, FLOP/s over GEMM.

    .venv/bin/python -m benchmarks.bench_stage2_train                      # 24 x 512^2, both configs
    .venv/bin/python -m benchmarks.bench_stage2_train --frames 8 --size 128 --configs fp32-ckpt
    .venv/bin/python -m benchmarks.bench_stage2_train --warmup 0 --configs fp32,bf16 --max-memory-gib 22

One step is what Stage II trains: the frozen Stage I target (encode + quantize of the HQ clip,
no gradient), the LQ encoder and both lookup transformers forward, cross-entropy on both code
maps plus the weighted latent MSE, backward, and an AdamW update of the trainable parameters.
Both published transformer configs run: ``bfvr`` (9 layers x 2 heads) and ``deflicker``
(6 layers x 4 heads), each configuration in a fresh process so its peak RSS is its own.
Configurations: ``fp32`` or ``bf16`` (CPU autocast), then any of ``-gemm`` (the LQ encoder's
attention backward as blocked matrix products), ``-ckpt`` (activation checkpointing of the LQ
encoder's and both transformers' blocks) and ``-cl`` (channels-last 3D Stage I layers). Random weights: the cost does
not depend on them. As in ``bench_stage1``, the step's FLOPs are counted on the meta device
(attention as matrix products, recomputation not counted) and set against a 2048^3 GEMM of the
same dtype measured in the same process after the steps.

``--warmup 0`` times the first step (on CPU within about 1% of later ones: 605 s against 597 s
for bfvr ``fp32-ckpt``), halving a run that takes 10-20 minutes per configuration here.
``--max-memory-gib`` caps each configuration's address space, so one that does not fit ends
with an allocation error line instead of pushing the machine into swap or the OOM killer.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from stcvq.inference.bench import gemm_flops_per_s, peak_rss_gib
from stcvq.nn.restorer import Stage2Config, Stage2Model
from stcvq.nn.runtime import autocast
from stcvq.nn.vqgan import Stage1Model

TASKS = ("bfvr", "deflicker")
CONFIGS = ("fp32-ckpt", "bf16-ckpt")  # without checkpointing, fp32 needs more than 22 GiB here (docs/benchmarks.md)


def _loss(model: Stage2Model, target: Stage1Model, hq: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        q = target.quantize(target.encode(hq))
    out = model(lq)
    ce = F.cross_entropy(out.logits_spatial.float(), q.indices_spatial)
    ce = ce + F.cross_entropy(out.logits_temporal.float(), q.indices_temporal)
    code = F.mse_loss(out.latent.float(), q.z_q.float())
    return model.config.lambda_ce * ce + model.config.code_weight * code


def step_flops(config: Stage2Config, frames: int, size: int) -> int:
    """FLOPs of one step's forward + backward (the frozen target's forward included), counted on
    the meta device."""
    with torch.device("meta"):
        model, target = Stage2Model(config), Stage1Model(config.stage1).eval().requires_grad_(False)
        hq, lq = torch.empty(1, 3, frames, size, size), torch.empty(1, 3, frames, size, size)
    with FlopCounterMode(display=False) as counter:
        _loss(model, target, hq, lq).backward()
    return counter.get_total_flops()


def measure_step(task: str, config_name: str, frames: int, size: int, steps: int, device: str = "cpu",
                 warmup: int = 1) -> dict:
    precision, *options = config_name.split("-")
    config = Stage2Config.profile("paper", task, clip_length=frames, size=size)
    torch.manual_seed(0)
    model = Stage2Model(config)
    model.set_activation_checkpointing("ckpt" in options)
    model.vqgan.set_gemm_attention_backward("gemm" in options)
    model.vqgan.set_channels_last("cl" in options)
    model = model.to(device)
    target = Stage1Model(config.stage1).eval().requires_grad_(False).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-5)
    hq = torch.rand(1, 3, frames, size, size, device=device)
    lq = torch.rand(1, 3, frames, size, size, device=device)
    times, losses = [], []
    for _ in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        with autocast(device, precision):
            loss = _loss(model, target, hq, lq)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    seconds = sum(times[warmup:]) / steps
    flops = step_flops(config, frames, size)
    gemm = gemm_flops_per_s({"fp32": "float32"}.get(precision, precision), device)
    spatial = config.spatial
    extra = {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30} if device.startswith("cuda") else {}
    return {**extra, "task": task, "config": config_name,
            "transformer": f"{spatial.layers} layers x {spatial.heads} heads",
            "clip": [frames, size, size], "threads": torch.get_num_threads(),
            "trainable_parameters": sum(p.numel() for p in trainable), "seconds_per_step": seconds,
            "warmup_steps": warmup, "warmup_s": sum(times[:warmup]), "peak_rss_gib": peak_rss_gib(),
            "step_tflop": flops / 1e12, "achieved_gflop_per_s": flops / seconds / 1e9, "gemm_gflop_per_s": gemm / 1e9,
            "fraction_of_gemm": flops / seconds / gemm, "losses": losses}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_in_subprocess(args: list[str]) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_stage2_train", "--part", *args],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"task": args[0], "config": args[1], "error": out.stderr.strip().splitlines()[-1:],
                "failed_after_s": round(time.perf_counter() - start, 1)}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=1, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (0: time the first step)")
    p.add_argument("--max-memory-gib", type=float, help="address-space cap per configuration (RLIMIT_AS)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: fp32|bf16 [-gemm] [-cl] [-ckpt]")
    p.add_argument("--part", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part is not None:
        task, name, frames, size, steps, warmup, cap = a.part
        if float(cap) > 0:
            limit = int(float(cap) * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(measure_step(task, name, int(frames), int(size), int(steps), warmup=int(warmup))))
        return
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for task in a.tasks.split(","):
        for name in a.configs.split(","):
            part = [task, name, str(a.frames), str(a.size), str(a.steps), str(a.warmup), str(a.max_memory_gib or 0)]
            print(json.dumps({**run_in_subprocess(part), "max_memory_gib": a.max_memory_gib}), flush=True)


if __name__ == "__main__":
    main()
