"""How much Eq. 6's MPR term sees of a trained Stage I's codebook use.

    .venv/bin/python benchmarks/bench_mpr_sharpness.py [--model models/stage1] [--power 1 4 8 32]

On the bfvr val clips: KL to uniform of the argmin usage (what collapse looks like) against the
KL of Eq. 6's similarity marginal, for each power on 1/D (1 = as printed). A marginal KL far
below the argmin one means the regulariser barely registers the collapse it should undo.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stcvq.nn.quantize import kl_to_uniform, marginal_similarity  # noqa: E402
from stcvq.nn.vqgan import Stage1Model  # noqa: E402
from stcvq.training.batches import shard_batches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "stage1"))
    parser.add_argument("--power", type=float, nargs="+", default=[1.0, 4.0, 8.0, 32.0])
    args = parser.parse_args()
    model = Stage1Model.from_pretrained(args.model).eval()
    clips = torch.cat([b["hq"] for b in shard_batches(ROOT / "data/shards/bfvr/val-bfvr.json", batch_size=4)()])
    report = {}
    with torch.no_grad():
        z = model.encode(clips)
        branches = (("spatial", model.spatial_codebook, z),
                    ("temporal", model.temporal_codebook, model.temporal_latent(z)))
        for name, vq, latent in branches:
            distances = vq.distances(latent.permute(0, 2, 3, 4, 1).reshape(-1, latent.shape[1]))
            usage = torch.bincount(distances.argmin(1), minlength=vq.num_codes).float() / len(distances)
            marginals = {}
            for power in args.power:
                total, count = marginal_similarity(distances, vq.reg_eps, power)
                marginals[f"power_{power:g}"] = kl_to_uniform(total / count, vq.reg_eps).item()
            report[name] = {"tokens": len(distances), "fraction_used": float((usage > 0).float().mean()),
                            "kl_argmin_usage": kl_to_uniform(usage, vq.reg_eps).item(),
                            "kl_similarity_marginal": marginals}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
