"""DVC stage `evaluate@<task>-<model>-<testset>`: score one model of a task on one test set.

Usage: python -m pipeline.evaluate {bfvr|deflicker|deflicker-pixel} --model models/<model>-<task>
           --testset <testset> --shards data/shards/<task>
           --metrics metrics/evaluate/<task>/<model>-<testset>.json
           --efficiency metrics/efficiency/evaluate/<task>/<model>-<testset>.json
           --plots plots/evaluate/<task>/<model>-<testset>
dvc.yaml's matrix runs it for every task, every name in params evaluate.models and every test set
in evaluate.testsets. Reads params evaluate, the model folder, and the test split of the shards
(<shards>/test-<task>.json) or the paired test set that evaluate.testsets.<testset> names. Writes
  <metrics>                      input / output metrics, null_reasons (same bytes every run)
  <efficiency>                   seconds per clip, frames per second, device (a timing: kept
                                 apart so the file above only changes with results)
  <plots>/temporal_profile.png   most degraded test clip: input | output | ground truth
  <plots>/frames.png             the same clip: rows input / output / ground truth
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import torch

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.data.shards import ClipDataset, index_name
from stcvq.evaluation.metrics import load_models
from stcvq.evaluation.score import (
    EvaluateConfig,
    EvaluateTestSetConfig,
    PairedTestSet,
    evaluate_task,
    frame_grid,
    paired_restorer,
    profile_comparison,
    restore_clip,
    to_uint8_video,
    write_png,
)
from stcvq.io import write_json
from stcvq.nn.restorer import Stage2Model
from stcvq.tasks import TASKS


def load_test_set(
    task: str, name: str, testset: EvaluateTestSetConfig, model: Stage2Model, shards: Path, device: str
) -> tuple[Any, Any, str]:
    """(samples, restorer, where they come from): the paired test set when the test set names
    folders, else the test split of the task's shards."""
    if testset.paired:
        lq_dir, gt_dir = testset.folders(task)
        try:
            samples = PairedTestSet(lq_dir, gt_dir, testset.frames or model.clip_length, testset.size or model.size)
        except ValueError as err:
            raise SystemExit(f"params.yaml:evaluate.testsets.{name}: {err}") from None
        restorer = paired_restorer(model, samples.frames, samples.size, device)
        return samples, restorer, f"{lq_dir} + {gt_dir}"
    source = shards / index_name("test", task)
    samples = ClipDataset(source, batch_size=None, shuffle=False, on_error="skip")
    # a model of another clip size (e.g. an imported 512^2 one) sees the clips resized
    first = next(iter(samples), None)
    restorer = model if first is None else paired_restorer(model, first["hq"].shape[1], first["hq"].shape[-1], device)
    return samples, restorer, str(source)


def plot_worst_clip(report: dict[str, Any], samples, restorer, cfg: EvaluateConfig, plots: Path, source: str) -> str:
    """Plot the most degraded clip (lowest input PSNR; a clean clip shows nothing to restore)."""
    scored = [c for c in report["per_clip"] if c["input"].get("psnr") is not None] or report["per_clip"]
    if not scored:
        raise SystemExit(f"{source}: no test clip could be scored: {report['skipped']}")
    worst = min(scored, key=lambda c: c["input"].get("psnr") or 0.0)["key"]
    clip = next(s for s in samples if s["meta"].get("key") == worst)
    restored, _ = restore_clip(restorer, clip["lq"], cfg.device)
    videos = [to_uint8_video(clip["lq"]), to_uint8_video(restored), to_uint8_video(clip["hq"])]
    write_png(plots / "temporal_profile.png", profile_comparison(videos, cfg.profile_column))
    write_png(plots / "frames.png", frame_grid(videos, cfg.grid_frames))
    return worst


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task")
    parser.add_argument("--model", required=True, type=Path, help="the Stage II model folder scored")
    parser.add_argument("--testset", required=True, help="a name in params evaluate.testsets")
    parser.add_argument("--shards", required=True, type=Path, help="the task's shard folder (its test split)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics written (JSON)")
    parser.add_argument("--efficiency", required=True, type=Path, help="timings written (JSON)")
    parser.add_argument("--plots", required=True, type=Path, help="folder the plots are written to")
    args = parser.parse_args(argv)
    task = args.task
    log = setup_logging(f"evaluate {args.model} on {args.testset}")
    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; known: {list(TASKS)}")
    cfg = from_dict(EvaluateConfig, load_params("evaluate")["evaluate"], where="params.yaml:evaluate")
    testset = cfg.testset(args.testset)
    model = Stage2Model.from_pretrained(args.model, map_location=cfg.device).eval()
    if model.task != task:
        raise SystemExit(f"{args.model}: a {model.task!r} model, not {task!r}")
    metric_models = load_models(lpips_weights=cfg.lpips_weights, lpips_net=cfg.lpips_net, raft_weights=cfg.raft_weights,
                                arcface_weights=cfg.arcface_weights, i3d_weights=cfg.i3d_weights, device=cfg.device)
    samples, restorer, source = load_test_set(task, args.testset, testset, model, args.shards, cfg.device)

    report = evaluate_task(restorer, samples, metric_models, task=task, max_clips=cfg.max_clips, faces=cfg.faces,
                           device=cfg.device)
    if isinstance(samples, PairedTestSet):
        report["skipped"] += samples.skipped
    else:
        report["skipped"] += [{"key": key, "error": "unreadable sample"} for key in samples.skipped]
    write_json(args.efficiency, report.pop("efficiency"))
    write_json(args.metrics, report)
    worst = plot_worst_clip(report, samples, restorer, cfg, args.plots, source)
    log.info("wrote %s and %s (clip %s); input vs output: %s", args.metrics, args.plots, worst,
             {k: (report["input"].get(k), report["output"].get(k))
              for k in ("psnr", "ssim", "ids", "flicker_index", "warping_error")})


if __name__ == "__main__":
    torch.set_num_threads(2)
    run_stage(main)
