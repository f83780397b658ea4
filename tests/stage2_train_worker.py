"""A tiny two-phase Stage II training run in its own process, for the DDP test.

Usage: python tests/stage2_train_worker.py OUT_DIR [--steps N]
Under DDP the caller sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (as torchrun does).
Rank 0 exports the final model to OUT_DIR/model, as the stage script does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stcvq.nn.restorer import PROFILES  # noqa: E402
from stcvq.nn.vqgan import Stage1Config, Stage1Model  # noqa: E402
from stcvq.training.batches import TensorClips  # noqa: E402
from stcvq.training.loop import TrainConfig, export_model  # noqa: E402
from stcvq.training.provenance import rank  # noqa: E402
from stcvq.training.stage2 import Stage2TrainConfig, train_stage2  # noqa: E402


def clips(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hq = F.interpolate(torch.rand(n, 3, 2, 4, 4, generator=g), size=(4, 16, 16), mode="trilinear", align_corners=False)
    noisefree = (hq * (0.6 + 0.8 * torch.rand(n, 1, 4, 1, 1, generator=g))).clamp(0, 1)
    lq = (noisefree + 0.03 * torch.randn(hq.shape, generator=g)).clamp(0, 1)
    return {"hq": hq, "lq_noisefree": noisefree, "lq": lq}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    stage1 = Stage1Model(Stage1Config.tiny())
    data, val = clips(8, 0), clips(2, 1)
    # adam_eps 1e-5: see stage1_train_worker.py (float noise on zero-gradient biases)
    cfg = Stage2TrainConfig(
        clip_length=4, size=16, model=PROFILES["tiny"].arch,
        train=TrainConfig(steps=args.steps, batch_size=4, lr=2e-3, min_lr=1e-4, adam_eps=1e-5, ema_decay=0.9,
                          eval_every=1000, ckpt_every=1000, log_every=1, num_threads=1, num_samples=0),
        noisefree_steps=args.steps)
    results = train_stage2(cfg, stage1, lambda lq: TensorClips(data["hq"], seed=3, extra={"lq": data[lq]}), args.out,
                           val_batches=lambda: [{"hq": val["hq"], "lq": val["lq"]}], has_noisefree=True)
    if rank() == 0:
        export_model(results[-1].final, Path(args.out) / "model", Path(args.out) / "full" / "dvclive", name="stage2",
                     description="a test run")


if __name__ == "__main__":
    main()
