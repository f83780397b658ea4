"""DVC stage `stage1`: train the Stage I model (3D VQGAN, two codebooks) on the HQ clips.

Reads params stage1 (shards task, model, loss, train) and data/shards/<task>/{train,val}-<task>.json
(only the HQ member is used; every task's shards carry the same HQ clips). Writes
  runs/stage1/{checkpoints,dvclive}             (persisted: a killed run resumes)
  models/stage1/{model.safetensors,config.json} (EMA weights, Stage1Model.from_pretrained)
  plots/stage1/...                              (DVCLive curves)
  metrics/stage1.json                           (val_psnr, codebook_usage_* as fractions of codes used)
  metrics/efficiency/stage1.json                (wall time of this run: a resumed run counts only its part)
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from pipeline.common import is_main_process, load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.data import ShardClips, shard_batches
from stcvq.io import write_json
from stcvq.nn.vqgan import Stage1Model
from stcvq.stage1 import Stage1Objective, Stage1TrainConfig, train_stage1


def main() -> None:
    log = setup_logging("stage1")
    p = dict(load_params("stage1")["stage1"])
    task = p.pop("shards", "bfvr")
    cfg = from_dict(Stage1TrainConfig, p, where="params.yaml:stage1")
    shards = Path("data/shards") / task
    train_index, val_index = shards / f"train-{task}.json", shards / f"val-{task}.json"
    run_dir = Path("runs") / "stage1"
    started = time.time()
    val = shard_batches(val_index, batch_size=cfg.train.batch_size)
    data_fingerprint = hashlib.sha256(train_index.read_bytes()).hexdigest()  # the index lists every shard's CRC
    result = train_stage1(cfg, ShardClips(train_index, seed=cfg.train.seed), run_dir, val_batches=val,
                          data_fingerprint=data_fingerprint)
    seconds = time.time() - started
    if not is_main_process():
        return

    out = Path("models") / "stage1"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(run_dir / "model", out)  # written atomically file by file by save_pretrained
    model = Stage1Model.from_pretrained(out)
    plots = Path("plots") / "stage1"
    shutil.rmtree(plots, ignore_errors=True)
    source = run_dir / "dvclive" / "plots" / "metrics"
    if source.is_dir():
        shutil.copytree(source, plots)
    # evaluated from the exported model, so a resumed (already finished) run still reports it
    objective = Stage1Objective.__new__(Stage1Objective)  # evaluate() needs no loss modules
    final = Stage1Objective.evaluate(objective, model.eval(), val())
    first = result.history[0] if result.history and result.history[0]["step"] == 0 else {}
    metrics = {**final, "step": result.step, "val_psnr_first_eval": first.get("val_psnr"),
               "parameters": sum(x.numel() for x in model.parameters()),
               "nonfinite_steps_skipped": result.bad_steps}
    write_json("metrics/stage1.json", metrics)
    # timings apart, so metrics/stage1.json has the same bytes on every run of the same code and seed
    write_json("metrics/efficiency/stage1.json", {"train_seconds_this_run": round(seconds, 1), "steps": result.step})
    log.info("wrote %s; val PSNR %.2f dB (first eval %s), codebook usage spatial %.3f temporal %.3f",
             out, final["val_psnr"], first.get("val_psnr"), final["codebook_usage_spatial"], final["codebook_usage_temporal"])


if __name__ == "__main__":
    run_stage(main)
