"""End-to-end Stage I on real face video (carphone): reconstruction quality rises with training.

The MPR-vs-none codebook comparison (the paper's Figure 5 at small scale) is measured by
benchmarks/bench_stage1_mpr.py; at the sizes this test can afford the difference is within noise,
so it is printed here, not asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.slow
def test_stage1_psnr_rises_on_carphone(tmp_path):
    from bench_stage1_mpr import carphone_clips

    from stcvq.nn.vqgan import Stage1Config
    from stcvq.training.batches import TensorClips
    from stcvq.training.loop import TrainConfig
    from stcvq.training.stage1 import Stage1LossConfig, Stage1TrainConfig, train_stage1

    clips = carphone_clips()
    train, val = clips[:-10], clips[-6:]
    usage = {}
    for reg in ("none", "mpr"):
        cfg = Stage1TrainConfig(
            model=Stage1Config.tiny(regularizer=reg, num_codes_spatial=128, num_codes_temporal=128),
            loss=Stage1LossConfig(perceptual_weight=0, discriminator=None),
            train=TrainConfig(steps=60, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=5, ema_decay=0,
                              eval_every=60, ckpt_every=1000, num_threads=2),
        )
        history = train_stage1(cfg, TensorClips(train), tmp_path / reg, val_batches=lambda: [{"hq": val}]).history
        first, last = history[0], history[-1]
        assert first["step"] == 0 and last["step"] == 60
        assert last["val_psnr"] > first["val_psnr"] + 5.0, (first, last)
        usage[reg] = (last["codebook_usage_spatial"], last["codebook_usage_temporal"])
        assert torch.isfinite(torch.tensor(last["val_psnr"]))
    print(f"codebook usage after 60 steps (spatial, temporal): none {usage['none']}, mpr {usage['mpr']}")
