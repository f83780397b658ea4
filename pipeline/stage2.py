"""DVC stage `stage2@<task>`: train one task's Stage II model on the frozen Stage I model.

Reads params stage2 (+ resolution, clips.length), the Stage I folder and the task's shards;
writes the persisted run folder (a killed run resumes), the self-contained model folder (for
`stcvq enhance`), the DVCLive curves, the final metrics (val accuracies, chance, PSNRs) and the
wall time. dvc.yaml's cmd names every path.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.io import write_json
from stcvq.nn.restorer import Stage2Model
from stcvq.nn.vqgan import Stage1Model
from stcvq.tasks import TASKS
from stcvq.training.batches import ShardClips, has_member, shard_batches
from stcvq.training.loop import export_model
from stcvq.training.provenance import rank
from stcvq.training.stage2 import Stage2TrainConfig, evaluate_stage2, train_stage2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    # under torchrun no option may abbreviate one of torchrun's (e.g. --run: --run-path)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--stage1", type=Path, required=True, help="trained Stage I folder")
    parser.add_argument("--shards", type=Path, required=True, help="the task's shard folder ({train,val}-TASK.json)")
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder: <phase>/{checkpoints,dvclive}")
    parser.add_argument("--model", type=Path, required=True, help="model folder to write")
    parser.add_argument("--plots", type=Path, required=True, help="DVCLive curves, one folder per phase")
    parser.add_argument("--metrics", type=Path, required=True, help="final metrics JSON")
    parser.add_argument("--efficiency", type=Path, required=True, help="wall time JSON")
    return parser.parse_args()


def main(args: argparse.Namespace) -> None:
    task = args.task
    log = setup_logging(f"stage2@{task}")
    params = load_params("stage2", "resolution", "clips")
    cfg = Stage2TrainConfig.for_task(params["stage2"], task, clip_length=params["clips"]["length"],
                                     size=params["resolution"], where="params.yaml:stage2")
    stage1 = Stage1Model.from_pretrained(args.stage1)

    train_index, val_index = args.shards / f"train-{task}.json", args.shards / f"val-{task}.json"
    noisefree = has_member(train_index, "lq_noisefree")
    phases = cfg.phases(noisefree)
    started = time.time()
    results = train_stage2(
        cfg, stage1, lambda lq: ShardClips(train_index, lq=lq, seed=cfg.train.seed), args.run_dir,
        val_batches=shard_batches(val_index, batch_size=cfg.train.batch_size), has_noisefree=noisefree)
    seconds = time.time() - started
    if rank() != 0:
        return

    export_model(results[-1].final, args.model, args.run_dir / phases[-1][0] / "dvclive", name=f"stage2-{task}",
                 description=f"Stage II ({task}): LQ encoder and code lookup transformers on Stage I",
                 labels=["stage2", task])
    shutil.rmtree(args.plots, ignore_errors=True)
    for name, _, _ in phases:
        source = args.run_dir / name / "dvclive" / "plots" / "metrics"
        if source.is_dir():  # the training curves; the system metrics stay in the run folder
            shutil.copytree(source, args.plots / name, ignore=shutil.ignore_patterns("system"))

    # evaluated from the exported model rather than taken from the run's history, so a resumed
    # (finished) run still reports what the current code measures
    model = Stage2Model.from_pretrained(args.model)
    final = evaluate_stage2(model, stage1, shard_batches(val_index, batch_size=cfg.train.batch_size)())
    final["step"] = results[-1].step
    metrics = {**final, "task": task, "schedule": cfg.schedule,
               "phases": [{"name": n, "lq": lq, "steps": s} for n, lq, s in phases],
               "parameters": sum(p.numel() for p in model.parameters()),
               "trainable_parameters": sum(p.numel() for n, p in model.named_parameters()
                                           if n.startswith(("vqgan.encoder.", "spatial_transformer.",
                                                            "temporal_transformer.")))}
    write_json(args.metrics, metrics)
    # timings apart, so the metrics file has the same bytes on every run of the same code and seed
    write_json(args.efficiency, {"train_seconds_this_run": round(seconds, 1), "steps": final["step"]})
    log.info("wrote %s; val acc spatial %.3f temporal %.3f (majority chance %.3f / %.3f); "
             "PSNR input %.2f output %.2f dB",
             args.model, final.get("val_acc_spatial", float("nan")), final.get("val_acc_temporal", float("nan")),
             final.get("chance_spatial_majority", float("nan")), final.get("chance_temporal_majority", float("nan")),
             final.get("val_psnr_input", float("nan")), final.get("val_psnr_output", float("nan")))


if __name__ == "__main__":
    run_stage(main, parse_args())
