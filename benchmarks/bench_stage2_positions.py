"""Quality cost of interpolating Stage II position embeddings to another resolution.

A Stage II model trained at S x S is evaluated on the val clips at S (its own size) and, with
``interpolate_positions=True``, on the same clips resized to other sides. Targets come from
the frozen Stage I model at each size (Stage I is convolutional: any size works), so the
accuracy drop is what the resized position tables cost. PSNRs are against the resized HQ.

Usage: python benchmarks/bench_stage2_positions.py [TASK] [SIDE ...]
       (defaults: deflicker, the trained side x 0.75 and x 1.5; needs models/stage1 and
       models/stage2-TASK, i.e. `dvc repro stage2@TASK`)

Measured (``deflicker 64 48 96 32 128``, the embedded default trained at 64^2, frame token
layout): index accuracy spatial/temporal 0.691/0.596 at 64; 0.705/0.638 at 48 and 0.669/0.551
at 96 (x0.75, x1.5: within about 5 points); 0.616/0.541 at 32 and 0.634/0.514 at 128 (x0.5,
x2: 6-8 points lower). Output PSNR stays within 0.1 dB of Stage I's own reconstruction at
48-128 but 0.6 dB below it at 32.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from stcvq.nn.restorer import Stage2Model
from stcvq.nn.vqgan import Stage1Model
from stcvq.training.batches import shard_batches
from stcvq.training.stage2 import evaluate_stage2


def main() -> None:
    task = sys.argv[1] if len(sys.argv) > 1 else "deflicker"
    torch.manual_seed(0)
    stage1 = Stage1Model.from_pretrained("models/stage1").eval()
    model = Stage2Model.from_pretrained(f"models/stage2-{task}", interpolate_positions=True)
    factor = stage1.config.spatial_factor
    sides = [int(s) for s in sys.argv[2:]] or [model.size, round(model.size * 0.75 / factor) * factor,
                                                 round(model.size * 1.5 / factor) * factor]
    val = list(shard_batches(f"data/shards/{task}/val-{task}.json")())
    results = []
    for side in sides:
        def resized(batch):
            out = dict(batch)
            for key in ("hq", "lq"):
                b, c, t, h, w = batch[key].shape
                frames = batch[key].permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
                frames = F.interpolate(frames, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
                out[key] = frames.reshape(b, t, c, side, side).permute(0, 2, 1, 3, 4)
            return out

        metrics = evaluate_stage2(model, stage1, [resized(b) for b in val])
        results.append({"side": side, "trained_side": model.size, "interpolated": side != model.size, **metrics})
        print(json.dumps(results[-1]))


if __name__ == "__main__":
    main()
