"""What Stage I can reconstruct at the embedded default's budget (the ceiling for Stage II).

    .venv/bin/python benchmarks/bench_stage1_capacity.py NAME [key=value ...] [--no-quantize]

Trains Stage I exactly as the `stage1` DVC stage does (params.yaml's stage1 section, the bfvr
shards under data/shards/, so run `dvc repro synthesize` first), with dotted overrides into
that section (e.g. `model.nf=16`, `train.steps=600`), in a temporary folder, and prints
one JSON line: val PSNR per evaluation, final codebook use, parameters, seconds.

`--no-quantize` replaces both codebooks by the identity (the fused latent is z + TA(z)): the
same autoencoder without quantisation, i.e. an upper bound on what the codebooks could give.
Stage II's output is decoded from Stage I codes, so no Stage II beats this figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stcvq.config import from_dict  # noqa: E402
from stcvq.nn import quantize  # noqa: E402
from stcvq.training.batches import ShardClips, shard_batches  # noqa: E402
from stcvq.training.stage1 import Stage1TrainConfig, evaluate_stage1, train_stage1  # noqa: E402


def identity_quantize(self, z: torch.Tensor) -> quantize.QuantizeResult:
    b, _, t, h, w = z.shape
    return quantize.QuantizeResult(z, torch.zeros(b, t, h, w, dtype=torch.long, device=z.device), z.new_zeros(()), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", help="dotted keys into params.yaml's stage1 section")
    parser.add_argument("--no-quantize", action="store_true")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["stage1"]
    for item in args.overrides:
        key, value = item.split("=", 1)
        *parents, last = key.split(".")
        section = params
        for parent in parents:
            section = section[parent]
        section[last] = yaml.safe_load(value)
    if args.no_quantize:
        quantize.VectorQuantizer.quantize = identity_quantize
    task = params.pop("shards")
    cfg = from_dict(Stage1TrainConfig, params, where="params.yaml:stage1 + overrides")
    shards = ROOT / "data" / "shards" / task
    val = shard_batches(shards / f"val-{task}.json", batch_size=cfg.train.batch_size)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="stcvq-capacity-") as run_dir:
        train_clips = ShardClips(shards / f"train-{task}.json", seed=cfg.train.seed)
        result = train_stage1(cfg, train_clips, run_dir, val_batches=val)
    model = result.final
    final = evaluate_stage1(model.eval(), val())
    history = [(h["step"], round(h["val_psnr"], 2)) for h in result.history if "val_psnr" in h]
    print(json.dumps({"name": args.name, "overrides": args.overrides, "no_quantize": args.no_quantize,
                      "seconds": round(time.time() - started, 1),
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "val_psnr_history": history, **final}))


if __name__ == "__main__":
    main()
