"""The enhancement cost measurements of stcvq.inference.bench, on the tiny profile (no timing asserted)."""

from __future__ import annotations

import math

import pytest
import torch

from stcvq.inference.bench import count_flops, dtype_output_difference
from stcvq.nn.restorer import Stage2Config, Stage2Model


def _tiny_model() -> Stage2Model:
    torch.manual_seed(0)
    return Stage2Model(Stage2Config.profile("tiny")).eval()


def test_dtype_difference_measures_bf16_against_a_separate_float32_run():
    """The reported figures are bf16-autocast output against a float32 run computed apart here."""
    model, clips = _tiny_model(), torch.rand(1, 3, 4, 16, 16)
    with torch.inference_mode():
        reference = model.restore(clips).clamp(0, 1) * 255
        indices = model.predict_indices(clips)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_out = model.restore(clips).float().clamp(0, 1) * 255
            bf16_indices = model.predict_indices(clips)
    diff = (bf16_out - reference).abs()
    assert diff.max() > 0  # bf16 does change the output: the comparison has something to measure
    report = dtype_output_difference(model, clips, dtype="bf16")
    assert report["max_abs_diff_255"] == pytest.approx(float(diff.max()), rel=1e-6)
    assert report["mean_abs_diff_255"] == pytest.approx(float(diff.mean()), rel=1e-6)
    assert report["psnr_vs_float32_db"] == pytest.approx(10 * math.log10(255**2 / float((diff**2).mean())), rel=1e-6)
    assert report["same_index_spatial"] == float((bf16_indices[0] == indices[0]).float().mean())
    assert report["same_index_temporal"] == float((bf16_indices[1] == indices[1]).float().mean())
    with pytest.raises(ValueError, match="float32 against itself"):
        dtype_output_difference(model, clips, dtype="float32")


def test_chunked_inference_counts_the_same_flops():
    """FLOPs are counted on meta tensors through the chunked path: chunks must add up."""
    with torch.device("meta"):
        model = _tiny_model()
    clips = torch.zeros(1, 3, 4, 16, 16, device="meta")
    model.vqgan.encoder.chunk_bytes = model.vqgan.decoder.chunk_bytes = None
    whole = count_flops(model, clips)
    model.vqgan.encoder.chunk_bytes = model.vqgan.decoder.chunk_bytes = 1
    assert count_flops(model, clips) == whole > 0
