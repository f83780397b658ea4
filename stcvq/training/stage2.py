"""Stage II objective and training entry; the model is :mod:`stcvq.nn.restorer`.

Objective: ``lambda_ce (CE_S + CE_T) + code_weight ||z_l - sg(z_q)||^2`` with the target indices
and z_q from the frozen Stage I model on the HQ clip. :func:`train_stage2` runs the loop of
:mod:`stcvq.training.loop` once per phase of the schedule (incremental: the noise-free degradation
first, then the full one; docs/design.md).

Configuration flows as Stage I's: params.yaml's ``stage2`` section, with one task's overrides
merged in, becomes a :class:`Stage2TrainConfig` (:meth:`Stage2TrainConfig.for_task`), validated
once; the model's own :class:`~stcvq.nn.restorer.Stage2Config` follows from it and the Stage I
model (:meth:`Stage2TrainConfig.model_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stcvq.config import check, from_dict, to_dict
from stcvq.nn.restorer import Stage2Arch, Stage2Config, Stage2Model
from stcvq.nn.runtime import unwrap
from stcvq.nn.vqgan import Stage1Config, Stage1Model, Stage1Quantized
from stcvq.tasks import TASKS, Task
from stcvq.training.loop import ClipSource, StepOutput, TrainConfig, TrainResult, train
from stcvq.training.monitor import clip_grid, psnr_per_clip
from stcvq.training.provenance import reset_stale_run, run_fingerprint

log = logging.getLogger(__name__)


@dataclass
class Stage2TrainConfig:
    """One task's Stage II: the clips it trains on, the architecture choices, the loop's config
    and the schedule. The Stage I model it trains on is an input of :func:`train_stage2`."""

    task: Task = "bfvr"
    clip_length: int = 24  # frames per clip (params.yaml clips.length)
    size: int = 512  # side of the square clips (params.yaml resolution)
    model: Stage2Arch = field(default_factory=Stage2Arch)
    train: TrainConfig = field(default_factory=TrainConfig)
    # incremental (paper Table 7): `noisefree_steps` on the noise-free degradation, then
    # `train.steps` on the full one; holistic: noisefree_steps + train.steps on the full one.
    schedule: Literal["incremental", "holistic"] = "incremental"
    noisefree_steps: int = 0

    def __post_init__(self) -> None:
        check(self.schedule in ("incremental", "holistic"),
              f"schedule must be incremental or holistic, got {self.schedule!r}")
        check(self.noisefree_steps >= 0, "noisefree_steps must be >= 0")

    @classmethod
    def for_task(cls, section: Mapping[str, Any], task: str, *, clip_length: int, size: int,
                 where: str = "stage2") -> "Stage2TrainConfig":
        """``section``'s shared settings with ``section["tasks"][task]``'s overrides merged in
        (``model`` and ``train`` key by key); unknown keys, unknown tasks and bad types are a
        ConfigError naming ``where``."""
        shared = {k: v for k, v in section.items() if k != "tasks"}
        per_task = section.get("tasks") or {}
        unknown = sorted(set(per_task) - set(TASKS))
        check(not unknown, f"{where}.tasks: unknown task(s) {unknown}; known: {list(TASKS)}")
        merged = dict(shared)
        for key, value in (per_task.get(task) or {}).items():
            nested = key in ("model", "train") and isinstance(value, Mapping)
            merged[key] = {**(shared.get(key) or {}), **value} if nested else value
        given = sorted({"task", "clip_length", "size"} & set(merged))
        check(not given, f"{where}: {given} come from the stage's task, clips.length and resolution")
        merged.update(task=task, clip_length=clip_length, size=size)
        return from_dict(cls, merged, where=f"{where} ({task})")

    def model_config(self, stage1: Stage1Config) -> Stage2Config:
        """The Stage II model's config on a Stage I model of config ``stage1``."""
        return Stage2Config.build(stage1, self.task, self.clip_length, self.size, self.model)

    def phases(self, has_noisefree: bool) -> list[tuple[str, str, int]]:
        """[(phase name, LQ member, steps)]; tasks without a noise-free variant train in one phase."""
        if self.schedule == "incremental" and has_noisefree and self.noisefree_steps > 0:
            return [("noisefree", "lq_noisefree", self.noisefree_steps), ("full", "lq", self.train.steps)]
        return [("full", "lq", self.noisefree_steps + self.train.steps)]


def _accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == target).float().mean()


def _brightness_error(clips: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per frame |mean(clip) - mean(reference)| on the 0..255 scale, (B*T,): what brightness
    flicker changes, and what PSNR mixes with every other difference."""
    return ((clips.float().mean(dim=(1, 3, 4)) - reference.float().mean(dim=(1, 3, 4))).abs() * 255).flatten().cpu()


def _degraded_frames(meta: Any, batch_size: int) -> list[list[int]]:
    """Per clip, the frame indices the synthesis degraded (de-flicker shards record them)."""
    if not isinstance(meta, list) or len(meta) != batch_size:
        return []
    out = []
    for m in meta:
        d = (m or {}).get("degradation") or {}
        out.append([int(f) for f in d.get("flicker_frames", d.get("rerendered_frames", []))])
    return out


@torch.no_grad()
def stage1_targets(stage1: Stage1Model, hq: torch.Tensor) -> Stage1Quantized:
    """What Stage II learns to predict: the frozen Stage I model's codes (and z_q) of the HQ clip."""
    stage1.to(hq.device)
    return stage1.quantize(stage1.encode(hq))


@torch.no_grad()
def evaluate_stage2(model: Stage2Model, stage1: Stage1Model, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Index accuracy of both predictors against the Stage I targets of the HQ clips, chance
    levels (uniform 1/N and the majority code's share), PSNR to HQ of the LQ input, of the
    Stage II output, and of Stage I's own reconstruction of HQ (the ceiling: the output is
    decoded by the same frozen decoder), per-frame brightness error (0..255) of input and
    output, and for de-flicker shards the PSNRs on the degraded frames only."""
    model = unwrap(model)
    device = next(model.parameters()).device
    hits = {"spatial": 0.0, "temporal": 0.0}
    targets: dict[str, list[torch.Tensor]] = {"spatial": [], "temporal": []}
    psnr_in, psnr_out, psnr_ceiling = [], [], []
    degraded: dict[str, list[torch.Tensor]] = {"input": [], "output": []}  # flickered / re-rendered frames
    brightness: dict[str, list[torch.Tensor]] = {"input": [], "output": []}
    for batch in batches:
        hq, lq = batch["hq"].to(device), batch["lq"].to(device)
        q = stage1_targets(stage1, hq)
        pred_s, pred_t = model.predict_indices(lq)
        for name, pred, tgt in (("spatial", pred_s, q.indices_spatial), ("temporal", pred_t, q.indices_temporal)):
            hits[name] += float((pred == tgt).sum())
            targets[name].append(tgt.flatten().cpu())
        out = model.vqgan.decode(model.vqgan.lookup(pred_s, pred_t), tuple(hq.shape[-3:])).clamp(0, 1)
        psnr_out.append(psnr_per_clip(out.float(), hq.float()).cpu())
        psnr_in.append(psnr_per_clip(lq.float(), hq.float()).cpu())
        ceiling = stage1.decode(q.z_q, tuple(hq.shape[-3:]))
        psnr_ceiling.append(psnr_per_clip(ceiling.float(), hq.float()).cpu())
        brightness["input"].append(_brightness_error(lq, hq))
        brightness["output"].append(_brightness_error(out, hq))
        for i, frames in enumerate(_degraded_frames(batch.get("meta"), hq.shape[0])):
            for f in frames:
                if f < hq.shape[2]:
                    sel = (slice(i, i + 1), slice(None), slice(f, f + 1))
                    degraded["input"].append(psnr_per_clip(lq[sel].float(), hq[sel].float()).cpu())
                    degraded["output"].append(psnr_per_clip(out[sel].float(), hq[sel].float()).cpu())
    if not psnr_out:
        raise ValueError("no validation clips")
    metrics: dict[str, float] = {}
    codes = model.config.stage1
    for name, n in (("spatial", codes.num_codes_spatial), ("temporal", codes.num_codes_temporal)):
        tgt = torch.cat(targets[name])
        metrics[f"val_acc_{name}"] = hits[name] / tgt.numel()
        metrics[f"chance_{name}_uniform"] = 1.0 / n
        metrics[f"chance_{name}_majority"] = float(torch.bincount(tgt, minlength=n).max()) / tgt.numel()
    metrics.update(val_psnr_input=float(torch.cat(psnr_in).mean()),
                   val_psnr_output=float(torch.cat(psnr_out).mean()),
                   val_psnr_stage1_hq=float(torch.cat(psnr_ceiling).mean()))
    metrics.update(val_brightness_error_input=float(torch.cat(brightness["input"]).mean()),
                   val_brightness_error_output=float(torch.cat(brightness["output"]).mean()))
    if degraded["input"]:  # de-flicker tasks: only some frames are degraded
        metrics.update(val_psnr_input_degraded_frames=float(torch.cat(degraded["input"]).mean()),
                       val_psnr_output_degraded_frames=float(torch.cat(degraded["output"]).mean()),
                       val_degraded_frames=len(degraded["input"]))
    return metrics


class Stage2Objective:
    """Loss of one micro-batch for :func:`stcvq.training.loop.train`.

    Targets are computed on the fly by the frozen Stage I model on the HQ clip rather than
    cached: the step already runs the LQ encoder forward and backward, and one no-grad forward
    of the HQ encoder of the same size costs about a third of that; a cache would have to be
    keyed to the Stage I weights and to every shard sample (and rebuilt whenever either
    changes), and would break the "same source, any DDP/resume layout" property the loop has."""

    def __init__(self, model: Stage2Model, stage1: Stage1Model, num_samples: int = 2):
        self.model = model
        self.stage1 = copy.deepcopy(stage1).eval().requires_grad_(False)
        self.num_samples = num_samples

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        cfg: Stage2Config = unwrap(model).config
        q = stage1_targets(self.stage1, batch["hq"])
        out = model(batch["lq"])
        ce_spatial = F.cross_entropy(out.logits_spatial.float(), q.indices_spatial)
        ce_temporal = F.cross_entropy(out.logits_temporal.float(), q.indices_temporal)
        code = F.mse_loss(out.latent.float(), q.z_q.detach().float())
        loss = cfg.lambda_ce * (ce_spatial + ce_temporal) + cfg.code_weight * code
        logs = {"ce_spatial": ce_spatial.detach(), "ce_temporal": ce_temporal.detach(), "code_loss": code.detach(),
                "acc_spatial": _accuracy(out.logits_spatial.detach(), q.indices_spatial),
                "acc_temporal": _accuracy(out.logits_temporal.detach(), q.indices_temporal)}
        return StepOutput(loss, logs)

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        return evaluate_stage2(model, self.stage1, batches)

    @torch.no_grad()
    def samples(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Rows LQ, Stage II output, HQ for the first clips of the batch."""
        model = unwrap(model)
        lq, hq = batch["lq"][: self.num_samples], batch["hq"][: self.num_samples]
        out = model.restore(lq)
        return {"restoration": clip_grid([r for trio in zip(lq, out, hq) for r in trio])}


def train_stage2(
    cfg: Stage2TrainConfig,
    stage1: Stage1Model,
    data_for: Callable[[str], ClipSource],
    out_dir: str | Path,
    val_batches: Callable[[], Iterable[dict[str, Any]]] | None = None,
    has_noisefree: bool = False,
    **train_kwargs,
) -> list[TrainResult]:
    """Train Stage II on ``stage1`` in its phases (:meth:`Stage2TrainConfig.phases`), each a run
    of :func:`stcvq.training.loop.train` in ``out_dir/<phase>`` (checkpoints, DVCLive).
    ``data_for(lq)`` gives the training source whose LQ member is ``lq`` ("lq" or
    "lq_noisefree"). A phase starts from the previous phase's final (EMA) weights. Returns each
    phase's result; the last one's ``final`` is the model to export.

    Resumes a killed run. A run folder left by another config, other data, another Stage I
    model or other code (this module, the data sources of :mod:`stcvq.training.batches` and
    every ``stcvq`` module they import) is wiped first (:mod:`stcvq.training.provenance`), so
    changed inputs never resume stale checkpoints."""
    out_dir = Path(out_dir)
    model_config = cfg.model_config(stage1.config)
    phases = cfg.phases(has_noisefree)
    sources = {lq: data_for(lq) for _, lq, _ in phases}
    config = {**to_dict(cfg), "phases": [list(p) for p in phases]}
    reset_stale_run(out_dir, run_fingerprint(config, sources.values(), code=(__name__, "stcvq.training.batches"),
                                             upstream=stage1))
    torch.manual_seed(cfg.train.seed)  # same initial weights on every process
    objective = Stage2Objective(Stage2Model.from_stage1(stage1, model_config), stage1, cfg.train.num_samples)
    results = []
    for name, lq, steps in phases:
        log.info("stage II phase %s: %d steps on %s", name, steps, lq)
        result = train(objective, sources[lq], dataclasses.replace(cfg.train, steps=steps), out_dir / name,
                       val_batches=val_batches, **train_kwargs)
        results.append(result)
        next_start = Stage2Model(model_config)  # a fresh module: no optimiser or EMA state carries over
        next_start.load_state_dict(result.final.state_dict())
        objective.model = next_start.freeze_stage1()
    return results


__all__ = ["Stage2Objective", "Stage2TrainConfig", "evaluate_stage2", "stage1_targets", "train_stage2"]
