"""The enhancement cost measurements of stcvq.inference.bench, on the tiny profile (no timing asserted)."""

from __future__ import annotations

import math

import torch

from stcvq.inference.bench import count_flops, dtype_output_difference
from stcvq.nn.restorer import Stage2Config, Stage2Model


def _tiny_model() -> Stage2Model:
    torch.manual_seed(0)
    return Stage2Model(Stage2Config.profile("tiny")).eval()


def test_dtype_difference_is_zero_against_itself_and_finite_for_bf16():
    model, clips = _tiny_model(), torch.rand(1, 3, 4, 16, 16)
    same = dtype_output_difference(model, clips, dtype="float32")
    assert same["max_abs_diff_255"] == 0 and math.isinf(same["psnr_vs_float32_db"])
    assert same["same_index_spatial"] == same["same_index_temporal"] == 1.0
    bf16 = dtype_output_difference(model, clips, dtype="bf16")
    assert 0 < bf16["max_abs_diff_255"] <= 255 and bf16["psnr_vs_float32_db"] > 0
    assert 0 <= bf16["same_index_spatial"] <= 1 and 0 <= bf16["same_index_temporal"] <= 1


def test_chunked_inference_counts_the_same_flops():
    """FLOPs are counted on meta tensors through the chunked path: chunks must add up."""
    with torch.device("meta"):
        model = _tiny_model()
    clips = torch.zeros(1, 3, 4, 16, 16, device="meta")
    model.vqgan.encoder.chunk_bytes = model.vqgan.decoder.chunk_bytes = None
    whole = count_flops(model, clips)
    model.vqgan.encoder.chunk_bytes = model.vqgan.decoder.chunk_bytes = 1
    assert count_flops(model, clips) == whole > 0
