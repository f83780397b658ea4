"""DVC stage `stage1`: train the Stage I model (3D VQGAN, two codebooks) on the HQ clips.

Params: params.yaml's stage1 section (model, loss, train; ``shards`` names the task whose shards
dvc.yaml passes in). Paths, all from dvc.yaml's cmd:
  --train, --val   shard indexes (only the HQ member is used; every task's shards carry the same HQ clips)
  --run-dir        checkpoints and DVCLive logs (persisted: a killed run resumes)
  --model          the exported EMA weights (Stage1Model.from_pretrained)
  --plots          the DVCLive curves
  --metrics        val_psnr, codebook_usage_* as fractions of codes used
  --timings        wall time of this run (a resumed run counts only its part)
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.io import write_json
from stcvq.nn.vqgan import Stage1Model
from stcvq.training.batches import ShardClips, shard_batches
from stcvq.training.loop import export_model
from stcvq.training.provenance import rank
from stcvq.training.stage1 import Stage1TrainConfig, evaluate_stage1, train_stage1


def train_and_export(cfg: Stage1TrainConfig, train_index: Path, val_index: Path, run_dir: Path, model_dir: Path,
                     plots_dir: Path) -> tuple[dict[str, Any] | None, float]:
    """Train (or resume) in ``run_dir``, export the model and plots: (the metrics, None off rank 0;
    the seconds this run trained)."""
    val = shard_batches(val_index, batch_size=cfg.train.batch_size)
    started = time.time()
    result = train_stage1(cfg, ShardClips(train_index, seed=cfg.train.seed), run_dir, val_batches=val)
    seconds = time.time() - started
    if rank() != 0:
        return None, seconds
    export_model(result.final, model_dir, run_dir / "dvclive", name="stage1",
                 description="Stage I: the 3D VQGAN with spatial and temporal codebooks", labels=["stage1"])
    shutil.rmtree(plots_dir, ignore_errors=True)
    curves = run_dir / "dvclive" / "plots" / "metrics"
    if curves.is_dir():  # the training curves; the system metrics stay in the run folder
        shutil.copytree(curves, plots_dir, ignore=shutil.ignore_patterns("system"))
    # evaluated from the exported model, so a resumed (already finished) run still reports it
    model = Stage1Model.from_pretrained(model_dir)
    final = evaluate_stage1(model.eval(), val())
    first = result.history[0] if result.history and result.history[0]["step"] == 0 else {}
    metrics = {**final, "step": result.step, "val_psnr_first_eval": first.get("val_psnr"),
               "parameters": sum(x.numel() for x in model.parameters()), "nonfinite_steps_skipped": result.bad_steps}
    return metrics, seconds


def main() -> None:
    log = setup_logging("stage1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("train", "val", "run-dir", "model", "plots", "metrics", "timings"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()
    params = dict(load_params("stage1")["stage1"])
    params.pop("shards", None)  # used by dvc.yaml to pick the shard paths
    cfg = from_dict(Stage1TrainConfig, params, where="params.yaml:stage1")
    metrics, seconds = train_and_export(cfg, args.train, args.val, args.run_dir, args.model, args.plots)
    if metrics is None:
        return
    write_json(args.metrics, metrics)
    # timings apart, so the metrics have the same bytes on every run of the same code and seed
    write_json(args.timings, {"train_seconds_this_run": round(seconds, 1), "steps": metrics["step"]})
    log.info("wrote %s; val PSNR %.2f dB (first eval %s), codebook usage spatial %.3f temporal %.3f", args.model,
             metrics["val_psnr"], metrics["val_psnr_first_eval"], metrics["codebook_usage_spatial"],
             metrics["codebook_usage_temporal"])


if __name__ == "__main__":
    run_stage(main)
