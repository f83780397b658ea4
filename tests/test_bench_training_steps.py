"""The training-step benchmarks measure what they say, at sizes a test can afford."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_gpu, bench_stage1, bench_stage2_train
from stcvq.nn.restorer import Stage2Config
from stcvq.nn.vqgan import Stage1Config, Stage1Model


@pytest.mark.slow
def test_stage1_step_reports_time_memory_and_flops():
    run = bench_stage1.measure_step("fp32-gemm-ckpt", "reference", 2, 32, 1)
    assert run["parameters"] == 39_321_091  # the published network
    assert run["seconds_per_step"] > 0 and run["peak_rss_gib"] > 0 and len(run["losses"]) == 2
    assert all(math.isfinite(loss) for loss in run["losses"])
    # FLOPs of forward + backward on the meta device: attention counted, about 3x the forward
    step = bench_stage1.step_flops(Stage1Config.paper(), (1, 3, 2, 32, 32))
    with torch.device("meta"):
        model = Stage1Model(Stage1Config.paper())
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 2, 32, 32, device="meta"))
    assert 2.9 < step / counter.get_total_flops() < 3.1
    assert math.isclose(run["step_tflop"], step / 1e12)
    assert math.isclose(run["fraction_of_gemm"], run["achieved_gflop_per_s"] / run["gemm_gflop_per_s"])


@pytest.mark.slow
def test_stage2_step_reports_time_memory_and_flops():
    run = bench_stage2_train.measure_step("deflicker", "fp32-ckpt", 2, 64, 1, warmup=0)
    assert run["transformer"] == "6 layers x 4 heads" and run["warmup_steps"] == 0 and len(run["losses"]) == 1
    config = Stage2Config.profile("paper", "deflicker", clip_length=2, size=64)
    assert math.isclose(run["step_tflop"], bench_stage2_train.step_flops(config, 2, 64) / 1e12)
    assert math.isclose(run["fraction_of_gemm"], run["achieved_gflop_per_s"] / run["gemm_gflop_per_s"])
    assert run["seconds_per_step"] > 0 and run["peak_rss_gib"] > 0
    assert all(math.isfinite(loss) for loss in run["losses"])


def test_gpu_plan_builds_every_step_check_without_a_gpu():
    checks = bench_gpu.plan()
    assert {c["check"] for c in checks} == {"stage1_step", "stage2_step"}
    assert {tuple(c["transformer"]) for c in checks if c["check"] == "stage2_step"} == {(9, 2), (6, 4)}
    assert all(8.5 < c["step_tflop"] < 9.0 for c in checks if c["check"] == "stage1_step")  # 3 x 2.95 TFLOP
