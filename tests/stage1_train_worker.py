"""A tiny Stage I training run in its own process, for the resume and DDP tests.

Usage: python tests/stage1_train_worker.py OUT_DIR [--steps N] [--batch B] [--accum A]
       [--kill-at STEP] [--no-resume]
Under DDP the usual torchrun variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) are set by
the caller. ``--kill-at`` sends SIGKILL to this process right after that step (and its
checkpoint, if one falls there): a hard crash, no cleanup. Rank 0 exports the final model to
OUT_DIR/model, as the stage script does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stcvq.nn.vqgan import Stage1Config  # noqa: E402
from stcvq.training.batches import TensorClips  # noqa: E402
from stcvq.training.loop import TrainConfig, export_model  # noqa: E402
from stcvq.training.provenance import rank  # noqa: E402
from stcvq.training.stage1 import Stage1LossConfig, Stage1TrainConfig, train_stage1  # noqa: E402


def synthetic_clips(n: int, t: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 3, t, size, size) in [0, 1]: two-colour stripes drifting across the frame."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    clips = []
    for _ in range(n):
        fx, fy, vx, vy = torch.rand(4, generator=g) * torch.tensor([0.8, 0.8, 2.0, 2.0])
        colours = torch.rand(3, 2, generator=g)
        frames = []
        for k in range(t):
            w = 0.5 + 0.5 * torch.sin(fx * (xx + vx * k) + fy * (yy + vy * k))
            frames.append(colours[:, :1, None] * w + colours[:, 1:, None] * (1 - w))
        clips.append(torch.stack(frames, 1))
    return torch.stack(clips)


def tiny_config(steps: int, batch: int, accum: int, **train_overrides) -> Stage1TrainConfig:
    model = Stage1Config.tiny(nf=4, ch_mult=(1, 2), temporal_downsample=(True,), latent_dim=8,
                              num_codes_spatial=16, num_codes_temporal=16)
    # adam_eps 1e-5: conv biases right before a GroupNorm have a zero true gradient; Adam's first
    # steps turn its float noise (~1e-9) into +-lr updates with eps 1e-8, which would swamp the
    # DDP-vs-single comparison with optimiser noise rather than measure the DDP arithmetic.
    train = TrainConfig(steps=steps, adam_eps=1e-5, batch_size=batch, grad_accum=accum, lr=2e-3, min_lr=1e-4,
                        warmup_steps=2, ema_decay=0.9, eval_every=1000, ckpt_every=2, log_every=1, num_threads=1,
                        **train_overrides)
    return Stage1TrainConfig(model=model, loss=Stage1LossConfig(perceptual_weight=0, discriminator=None), train=train)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args()
    cfg = tiny_config(args.steps, args.batch, args.accum)

    def crash(step: int) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    data = TensorClips(synthetic_clips(12), seed=3)  # 12 clips: epochs end mid-run, the data position matters
    val = synthetic_clips(2, seed=9)
    result = train_stage1(cfg, data, args.out, val_batches=lambda: [{"hq": val}], resume=not args.no_resume,
                          on_step_end=crash if args.kill_at else None)
    if rank() == 0:
        export_model(result.final, Path(args.out) / "model", Path(args.out) / "dvclive", name="stage1",
                     description="a test run")


if __name__ == "__main__":
    main()
