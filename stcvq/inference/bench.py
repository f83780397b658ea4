"""Cost of enhancing with the real architecture and random weights.

The architecture's cost does not depend on its weights, so the paper profile can be measured
without the paper's checkpoints. Each figure comes with the machine's own reference measured
in the same run: a matrix product of the same dtype gives the FLOP/s the hardware reaches, and
``achieved_flops_per_s`` divided by it is how well the model uses the machine. On a CPU shared
with other jobs, wall time includes their share of the cores; ``fraction_of_gemm_cpu_time``
takes both rates per CPU-second of this process instead.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from stcvq.inference.enhance import StreamConfig, WholeFrame, restore_stream
from stcvq.nn.runtime import autocast

_TORCH_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def gemm_flops_per_s(dtype: str, device: str, n: int = 2048, repeats: int = 5, clock=time.perf_counter) -> float:
    """Best-of-``repeats`` FLOP/s of an n^3 matrix product in ``dtype`` on ``device``, per
    second of ``clock`` (``time.process_time``: per CPU-second of this process's threads)."""
    torch_dtype = _TORCH_DTYPES[dtype]
    a = torch.randn(n, n, device=device).to(torch_dtype)
    b = torch.randn(n, n, device=device).to(torch_dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first product warms caches and kernels up
        _sync(device)
        start = clock()
        torch.mm(a, b)
        _sync(device)
        best = min(best, clock() - start)
    return 2 * n**3 / best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**3 if sys.platform == "darwin" else 1024**2)


def flops_by_op(model: torch.nn.Module, clips: torch.Tensor) -> dict[str, int]:
    """FLOPs of one ``model.restore(clips)`` call per aten op (convolution, bmm: attention,
    addmm: linear layers), counted by torch's FlopCounterMode."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.restore(clips)
    return {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def count_flops(model: torch.nn.Module, clips: torch.Tensor) -> int:
    """FLOPs of one ``model.restore(clips)`` call."""
    return sum(flops_by_op(model, clips).values())


def build_bench_model(profile: str, task: str, size: int | None, attention: str | None, token_layout: str | None):
    """A randomly initialised Stage II model of ``profile`` (stcvq.nn.restorer.PROFILES) at
    input side ``size``; ``attention`` and ``token_layout`` override the profile's Stage I
    attention and the transformers' token layout. Profile ``reference`` is the published
    checkpoints' network (trained at 512; random weights run at any multiple of 8)."""
    from stcvq.nn.restorer import PROFILES, Stage2Config, Stage2Model

    overrides: dict = {}
    if size is not None:
        overrides["size"] = size
    if token_layout is not None:
        overrides["token_layout"] = token_layout
    if attention is not None and profile in PROFILES:
        overrides["stage1"] = dataclasses.replace(PROFILES[profile].stage1(), attn_layout=attention)
    config = Stage2Config.profile(profile, task, **overrides)
    torch.manual_seed(0)
    return Stage2Model(config).eval()


def bench_enhance(
    profile: str = "embedded",
    task: str = "bfvr",
    frames: int | None = None,
    size: int | None = None,
    attention: str | None = None,
    token_layout: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    repeats: int = 1,
    model_dir: str | None = None,
) -> dict:
    """Enhance a synthetic ``frames``-long clip through the streaming path; one JSON-ready dict.
    ``model_dir``: the model folder's network and weights instead of a profile's."""
    from stcvq.nn.restorer import Stage2Model

    if model_dir is not None:
        model = Stage2Model.from_pretrained(model_dir)
        profile, task = f"model:{model_dir}", model.task
    else:
        model = build_bench_model(profile, task, size, attention, token_layout)
    size, length = model.size, model.clip_length
    frames = frames or length
    with torch.device("meta"):  # FLOPs of one window, without allocating anything
        meta_model = Stage2Model(model.config).eval()
    window_flops = flops_by_op(meta_model, torch.zeros(1, 3, length, size, size, device="meta"))
    flops_per_window = sum(window_flops.values())
    del meta_model

    model = model.to(device)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    framing = WholeFrame(size, size, size)
    config = StreamConfig(overlap=0, device=device, dtype=dtype)  # no overlap: FLOPs = windows x window

    def run() -> int:
        count = 0
        synthetic = (np.roll(base, i, axis=1) for i in range(frames))  # a moving texture, generated lazily
        for _ in restore_stream(synthetic, model, framing.to_model, framing.from_model, config):
            count += 1
        return count

    if device.startswith("cuda"):
        run()  # warm-up: kernel selection and allocation
        torch.cuda.reset_peak_memory_stats()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(max(1, repeats)):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        written = run()
        _sync(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        if seconds < best:
            best, best_cpu = seconds, cpu_seconds
    windows = -(-frames // length)
    flops = flops_per_window * windows
    gemm = gemm_flops_per_s(dtype, device)
    gemm_cpu = gemm_flops_per_s(dtype, device, clock=time.process_time) if device == "cpu" else None
    result = {
        "profile": profile,
        "task": task,
        "frames": written,
        "size": size,
        "clip_length": length,
        "layout": model.config.stage1.layout,
        "attention": model.config.stage1.attn_layout,
        "token_layout": model.config.spatial.token_layout,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": best,
        "frames_per_second": written / best,
        "peak_rss_gib": peak_rss_gib(),
        "flops": flops,
        "flops_by_op": {op: n * windows for op, n in window_flops.items()},
        "achieved_flops_per_s": flops / best,
        "gemm_flops_per_s": gemm,
        "fraction_of_gemm": flops / best / gemm,
        # Per CPU-second of this process: the same ratio, less sensitive to other processes
        # taking the cores (wall time counts their share, CPU time does not).
        "cpu_seconds": best_cpu,
        "fraction_of_gemm_cpu_time": flops / best_cpu / gemm_cpu if device == "cpu" else None,
        "dtype": dtype,
        "device": device,
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 1024**3
        result["gpu"] = torch.cuda.get_device_name()
    return result


def dtype_output_difference(model, clips: torch.Tensor, dtype: str = "bf16", device: str = "cpu") -> dict:
    """How far ``model.restore(clips)`` under ``dtype`` autocast lands from float32: output
    difference on the 0..255 scale, PSNR of one against the other, and the share of code
    indices both predict alike (a flipped index changes a whole latent cell's decoded patch)."""
    if dtype in ("float32", "fp32"):
        raise ValueError("dtype: float32 against itself measures nothing; pick bf16 or fp16")
    model, clips = model.to(device).eval(), clips.to(device)
    outputs, indices = {}, {}
    for name in ("float32", dtype):
        with torch.inference_mode(), autocast(device, name):
            indices[name] = model.predict_indices(clips)
            outputs[name] = model.restore(clips).float().clamp(0, 1) * 255
    diff = (outputs[dtype] - outputs["float32"]).abs()
    mse = float((diff**2).mean())
    return {
        "dtype": dtype,
        "max_abs_diff_255": float(diff.max()),
        "mean_abs_diff_255": float(diff.mean()),
        "psnr_vs_float32_db": 10 * np.log10(255**2 / mse) if mse > 0 else float("inf"),
        "same_index_spatial": float((indices[dtype][0] == indices["float32"][0]).float().mean()),
        "same_index_temporal": float((indices[dtype][1] == indices["float32"][1]).float().mean()),
    }
