"""DVC stage `stage2@<task>`: train one task's Stage II model on the frozen Stage I model.

Usage: python -m pipeline.stage2 {bfvr|deflicker|deflicker-pixel}
Reads params stage2 (+ resolution, clips.length), models/stage1 (Stage1Model folder) and
data/shards/<task>/{train,val}-<task>.json. Writes
  runs/stage2-<task>/<phase>/{checkpoints,dvclive}  (persisted: a killed run resumes)
  models/stage2-<task>/{model.safetensors,config.json}  (self-contained, for `stcvq enhance`)
  plots/stage2-<task>/<phase>/...                    (DVCLive curves, for `dvc plots`)
  metrics/stage2-<task>.json                         (final val accuracies, chance, PSNRs)
  metrics/efficiency/stage2-<task>.json              (wall time of this run)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from pipeline.common import is_main_process, load_params, run_stage, setup_logging
from stcvq.config import from_dict, to_dict
from stcvq.data import ShardClips, has_member, shard_batches
from stcvq.io import write_json
from stcvq.nn.vqgan import Stage1Model
from stcvq.stage2 import TASKS, Stage2Arch, Stage2Config, Stage2Objective, Stage2TrainConfig, train_stage2
from stcvq.train import TrainConfig


def main(task: str) -> None:
    log = setup_logging(f"stage2@{task}")
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; known: {list(TASKS)}")
    params = load_params("stage2", "resolution", "clips")
    p = params["stage2"]
    per_task = (p.get("tasks") or {}).get(task) or {}
    arch = from_dict(Stage2Arch, {**p.get("model", {}), **per_task.get("model", {})}, where=f"params.yaml:stage2.model ({task})")
    train_cfg = from_dict(TrainConfig, {**p.get("train", {}), **per_task.get("train", {})}, where=f"params.yaml:stage2.train ({task})")
    stage1 = Stage1Model.from_pretrained(p["stage1_model"])
    model_cfg = Stage2Config.build(stage1.config, task, clip_length=params["clips"]["length"], size=params["resolution"], **to_dict(arch))
    cfg = Stage2TrainConfig(model=model_cfg, train=train_cfg, schedule=p.get("schedule", "incremental"),
                            noisefree_steps=p.get("noisefree_steps", 0))

    shards = Path("data/shards") / task
    train_index, val_index = shards / f"train-{task}.json", shards / f"val-{task}.json"
    noisefree = has_member(train_index, "lq_noisefree")
    run_dir = Path("runs") / f"stage2-{task}"
    started = time.time()
    model, results = train_stage2(
        cfg, stage1, lambda lq: ShardClips(train_index, lq=lq, seed=train_cfg.seed), run_dir,
        val_batches=shard_batches(val_index, batch_size=train_cfg.batch_size), has_noisefree=noisefree)
    seconds = time.time() - started
    if not is_main_process():
        return

    out = Path("models") / f"stage2-{task}"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".stage2-{task}.", dir=out.parent))
    staging.chmod(0o755)
    model.save_pretrained(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)

    plots = Path("plots") / f"stage2-{task}"
    shutil.rmtree(plots, ignore_errors=True)
    for name, _, _ in cfg.phases(noisefree):
        source = run_dir / name / "dvclive" / "plots" / "metrics"
        if source.is_dir():
            shutil.copytree(source, plots / name)

    # evaluated here rather than taken from the run's history, so a resumed (finished) run still
    # reports what the current code measures
    final = Stage2Objective(model, stage1).evaluate(model, shard_batches(val_index, batch_size=train_cfg.batch_size)())
    final["step"] = results[-1].step
    metrics = {**final, "task": task, "schedule": cfg.schedule,
               "phases": [{"name": n, "lq": lq, "steps": s} for n, lq, s in cfg.phases(noisefree)],
               "parameters": sum(p_.numel() for p_ in model.parameters()),
               "trainable_parameters": sum(p_.numel() for n_, p_ in model.named_parameters()
                                           if n_.startswith(("vqgan.encoder.", "spatial_transformer.", "temporal_transformer.")))}
    write_json(f"metrics/stage2-{task}.json", metrics)
    # timings apart, so metrics/stage2-<task>.json has the same bytes on every run of the same code and seed
    write_json(f"metrics/efficiency/stage2-{task}.json", {"train_seconds_this_run": round(seconds, 1), "steps": final["step"]})
    log.info("wrote %s; val acc spatial %.3f temporal %.3f (majority chance %.3f / %.3f); PSNR input %.2f output %.2f dB",
             out, final.get("val_acc_spatial", float("nan")), final.get("val_acc_temporal", float("nan")),
             final.get("chance_spatial_majority", float("nan")), final.get("chance_temporal_majority", float("nan")),
             final.get("val_psnr_input", float("nan")), final.get("val_psnr_output", float("nan")))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    run_stage(main, sys.argv[1])
