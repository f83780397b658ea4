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

from pipeline.common import is_main_process, load_params, run_stage, setup_logging
from stcvq.io import atomic_folder, write_json
from stcvq.nn.vqgan import Stage1Model
from stcvq.tasks import TASKS
from stcvq.training.batches import ShardClips, has_member, shard_batches
from stcvq.training.stage2 import Stage2Objective, Stage2Params, train_stage2


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
    stage2 = Stage2Params.for_task(params["stage2"], task, where="params.yaml:stage2")
    stage1 = Stage1Model.from_pretrained(args.stage1)
    cfg = stage2.train_config(stage1.config, task, clip_length=params["clips"]["length"], size=params["resolution"])

    train_index, val_index = args.shards / f"train-{task}.json", args.shards / f"val-{task}.json"
    noisefree = has_member(train_index, "lq_noisefree")
    started = time.time()
    model, results = train_stage2(
        cfg, stage1, lambda lq: ShardClips(train_index, lq=lq, seed=cfg.train.seed), args.run_dir,
        val_batches=shard_batches(val_index, batch_size=cfg.train.batch_size), has_noisefree=noisefree)
    seconds = time.time() - started
    if not is_main_process():
        return

    with atomic_folder(args.model) as staging:
        model.save_pretrained(staging)
    shutil.rmtree(args.plots, ignore_errors=True)
    for name, _, _ in cfg.phases(noisefree):
        source = args.run_dir / name / "dvclive" / "plots" / "metrics"
        if source.is_dir():
            shutil.copytree(source, args.plots / name)

    # evaluated here rather than taken from the run's history, so a resumed (finished) run still
    # reports what the current code measures
    final = Stage2Objective(model, stage1).evaluate(model, shard_batches(val_index, batch_size=cfg.train.batch_size)())
    final["step"] = results[-1].step
    metrics = {**final, "task": task, "schedule": cfg.schedule,
               "phases": [{"name": n, "lq": lq, "steps": s} for n, lq, s in cfg.phases(noisefree)],
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
