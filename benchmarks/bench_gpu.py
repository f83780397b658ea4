"""The GPU checks as one prepared run on a machine with a CUDA device.

The default run takes under two minutes on one H200 (``--skip-*`` leaves parts out); its
figures are in docs/benchmarks.md, "First GPU run" (raw lines:
docs/measurements/bench_gpu-h200.jsonl).

On the project's device machine, python3 has torch, numpy, opencv, tqdm and safetensors but not
PyAV, which ``stcvq.media.video`` imports. Carry a wheel:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl av
    # run(carry=[".whl"]):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
        PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 -m benchmarks.bench_gpu | tee $OUT/gpu.jsonl

``--dry-run`` prints the training-step checks it would run (built on the meta device, no GPU).

Prints one JSON line per check:

- ``stage1_train``: the real training loop (``train_stage1``) on the paper profile for a few
  steps under bf16 and under fp16 autocast (fp16 with its GradScaler), on 8 x 128^2 clips:
  steps whose loss was not finite (the NaN guard's count), seconds, peak GPU memory.
- ``stage1_step``: ``benchmarks/bench_stage1.py``'s training step of the paper profile's Stage I
  (the published network) at 24 x 256^2 on cuda: float32, bf16 autocast, bf16 with activation
  checkpointing, bf16 channels-last; seconds per step, peak GPU memory, FLOP/s over the same-run GEMM.
- ``stage2_step``: ``benchmarks/bench_stage2_train.py``'s Stage II training step at 24 x 512^2,
  both transformer configs (bfvr 9 x 2 heads, deflicker 6 x 4), float32 and bf16.
- ``enhance``: ``stcvq bench enhance``'s measurement (:func:`stcvq.inference.bench.bench_enhance`) of the
  paper profile at 24 x 512^2 on cuda, factorized and global attention, float32 / bf16 / fp16,
  best of 3 after a warm-up. The paper reports 2.995 s on an A100; the aim is under 1 s on an
  H100.
- ``enhance_reference``: the same for the imported checkpoints' network (profile ``reference``),
  float32 and bf16.

Not covered: nccl with two processes needs two GPUs (one per rank); a one-GPU lease cannot run it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_stage1, bench_stage2_train  # noqa: E402
from stcvq.nn.restorer import Stage2Config  # noqa: E402
from stcvq.nn.vqgan import Stage1Config  # noqa: E402

STAGE1_STEPS = ("fp32", "bf16", "bf16-ckpt", "bf16-cl")  # bench_stage1 configurations, 24 x 256^2
STAGE2_STEPS = ("fp32", "bf16")  # bench_stage2_train configurations, 24 x 512^2, per task


def plan() -> list[dict]:
    """The step checks and their networks' sizes, built on the meta device (no GPU needed)."""
    checks = []
    for name in STAGE1_STEPS:
        shape = (1, 3, 24, 256, 256)
        tflop = bench_stage1.step_flops(Stage1Config.paper(), shape) / 1e12
        checks.append({"check": "stage1_step", "config": name, "clip": list(shape[2:]), "step_tflop": tflop})
    for task in bench_stage2_train.TASKS:
        config = Stage2Config.profile("paper", task)
        for name in STAGE2_STEPS:
            checks.append({"check": "stage2_step", "task": task, "config": name, "clip": [24, 512, 512],
                           "transformer": [config.spatial.layers, config.spatial.heads]})
    return checks


def stage1_train(precision: str, steps: int, frames: int, size: int) -> dict:
    from stcvq.training.batches import TensorClips
    from stcvq.training.loop import TrainConfig
    from stcvq.training.stage1 import Stage1LossConfig, Stage1TrainConfig, train_stage1

    cfg = Stage1TrainConfig(
        model=Stage1Config.paper(),
        loss=Stage1LossConfig(perceptual_weight=0, discriminator=None),  # no weights carried
        train=TrainConfig(steps=steps, batch_size=1, lr=7e-5, min_lr=6e-5, precision=precision, ema_decay=0.0,
                          eval_every=10**6, ckpt_every=10**6, log_every=1))
    clips = torch.rand(4, 3, frames, size, size, generator=torch.Generator().manual_seed(0))
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_stage1(cfg, TensorClips(clips), tmp, resume=False)
    torch.cuda.synchronize()
    return {"check": "stage1_train", "precision": precision, "steps": result.step, "nonfinite_steps": result.bad_steps,
            "seconds": time.perf_counter() - start, "clip": [frames, size, size],
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 1024**3, "gpu": torch.cuda.get_device_name()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-enhance", action="store_true")
    parser.add_argument("--skip-steps", action="store_true", help="skip the Stage I / II training-step checks")
    parser.add_argument("--dry-run", action="store_true", help="print the step checks' plan; needs no GPU")
    args = parser.parse_args()
    if args.dry_run:
        for check in plan():
            print(json.dumps(check))
        return 0
    if not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device here", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    if not args.skip_train:
        for precision in ("bf16", "fp16"):
            print(json.dumps(stage1_train(precision, args.train_steps, 8, 128)), flush=True)
    if not args.skip_steps:
        for name in STAGE1_STEPS:
            torch.cuda.reset_peak_memory_stats()
            run = bench_stage1.measure_step(name, "reference", 24, 256, 3, "cuda")
            print(json.dumps({"check": "stage1_step", **run}), flush=True)
        for task in bench_stage2_train.TASKS:
            for name in STAGE2_STEPS:
                torch.cuda.reset_peak_memory_stats()
                run = bench_stage2_train.measure_step(task, name, 24, 512, 3, "cuda")
                print(json.dumps({"check": "stage2_step", **run}), flush=True)
    if not args.skip_enhance:
        from stcvq.inference.bench import bench_enhance

        for attention in ("factorized", "global"):
            for dtype in ("float32", "bf16", "fp16"):
                run = bench_enhance("paper", "bfvr", 24, 512, attention, None, dtype, "cuda", repeats=3)
                print(json.dumps({"check": "enhance", **run}), flush=True)
        for dtype in ("float32", "bf16"):  # the published checkpoints' network
            run = bench_enhance("reference", "bfvr", 24, 512, None, None, dtype, "cuda", repeats=3)
            print(json.dumps({"check": "enhance_reference", **run}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
