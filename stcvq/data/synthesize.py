"""The ``synthesize`` stage: degrade every clip of the clip table for one task and write the
(HQ, LQ) pairs as shards.

Each clip's frames are decoded once (:func:`stcvq.data.clips.iter_clip_frames`), degraded
(:func:`stcvq.data.degrade.synthesize_clip`) and encoded in a worker process, then written by one
:class:`stcvq.data.shards.ShardWriter` per split in the order the clips were decoded. A clip's seed
comes from (global seed, task, clip id), so the bytes depend neither on the number of workers nor
on their scheduling.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from stcvq.data.clips import iter_clip_frames
from stcvq.data.degrade import SynthesisConfig, clip_seed, make_renderer, synthesize_clip
from stcvq.data.shards import FRAME_EXTENSIONS, ShardConfig, ShardWriter, encode_frames

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClipJob:
    """One clip to degrade and encode; sent whole to a worker process."""

    row: dict[str, Any]  # the clip table's row
    frames: np.ndarray  # HQ frames (T, H, W, 3) uint8
    task: str
    synth_cfg: SynthesisConfig
    codec: str  # the shards' frame codec
    global_seed: int
    seed: int  # this clip's seed, from (global_seed, task, clip id)
    renderer: Any = None  # a loaded pixel-flicker renderer, or None to make one per clip


@dataclasses.dataclass(frozen=True)
class ClipResult:
    clip_id: str
    members: dict[str, bytes] | None  # extension -> bytes, None when the clip failed
    meta: dict[str, Any]
    failure: str | None  # why the clip was skipped


def clip_metadata(job: ClipJob, drawn: dict[str, Any]) -> dict[str, Any]:
    """The sample's JSON member: where the clip comes from, its split, seeds and every draw."""
    row, frames = job.row, job.frames
    return {
        "clip_id": row["clip_id"], "video_id": row["video_id"], "source_group": row["source_group"],
        "source_path": row["source_path"], "original_path": row.get("original_path", ""), "split": row["split"],
        "split_mode": row["split_mode"], "split_range": [row["split_start"], row["split_stop"]],
        "frame_start": int(row["frame_start"]), "frame_stop": int(row["frame_stop"]), "fps": float(row["fps"]),
        "num_frames": int(frames.shape[0]), "height": int(frames.shape[1]), "width": int(frames.shape[2]),
        "task": job.task, "global_seed": job.global_seed, "seed": job.seed, "frame_codec": job.codec,
        "backend": drawn.get("backend"), "degradation": drawn,
    }


def synthesize_job(job: ClipJob) -> ClipResult:
    """Degrade one clip and encode its members (the worker body, picklable for a process pool)."""
    row = job.row
    try:
        lqs, drawn = synthesize_clip(job.task, job.frames, job.synth_cfg, job.seed, fps=float(row["fps"]) or 25.0,
                                     renderer=job.renderer)
    except Exception as err:  # one bad clip is recorded and skipped, nothing else lost
        return ClipResult(row["clip_id"], None, {}, f"{row['clip_id']}: synthesis failed: {type(err).__name__}: {err}")
    meta = clip_metadata(job, drawn)
    ext = FRAME_EXTENSIONS[job.codec]
    members = {f"hq.{ext}": encode_frames(job.frames, job.codec, row["fps"])}
    for name, lq in lqs.items():
        members[f"{name}.{ext}"] = encode_frames(lq, job.codec, row["fps"])
    members["json"] = (json.dumps(meta, sort_keys=True, allow_nan=False) + "\n").encode()
    return ClipResult(row["clip_id"], members, meta, None)


def write_task_shards(
    clips: pd.DataFrame, task: str, synth_cfg: SynthesisConfig, shard_cfg: ShardConfig, out_dir: str | Path, *,
    seed: int = 0, workers: int = 1, renderer: Any = None, splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Degrade every clip for ``task`` and write ``{split}-{task}-%06d.tar`` + index per split.

    ``clips`` is the table from :func:`stcvq.data.clips.plan_clips`. Returns a summary with counts per
    split and every skipped clip with its reason. Every split in ``splits`` (default: those in
    ``clips``) gets an index, an empty one when it has no clips, so readers find it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if task == "deflicker-pixel" and renderer is None:
        renderer = make_renderer(synth_cfg.deflicker_pixel)  # fails early and clearly without weights
    if renderer is not None and renderer.name == "diffusers":
        workers = 1  # one model in one process; the pipeline threads internally
    splits = list(dict.fromkeys([*(splits or []), *clips["split"]]))
    skipped: list[dict[str, str]] = []

    def jobs() -> Iterator[ClipJob]:
        for row, frames, reason in iter_clip_frames(clips):
            if frames is None:
                skipped.append({"clip_id": row["clip_id"], "reason": reason})
                continue
            yield ClipJob(row, frames, task, synth_cfg, shard_cfg.frame_codec, global_seed=seed,
                          seed=clip_seed(seed, task, row["clip_id"]), renderer=renderer)

    # One writer per split, all open at once, fed in the (deterministic) order clips are decoded:
    # pool.map keeps that order, so the bytes do not depend on scheduling, and nothing piles up.
    writers = {split: ShardWriter(out_dir, split, task, shard_cfg) for split in splits}
    backend = None
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        results = pool.map(synthesize_job, jobs(), chunksize=1) if pool else map(synthesize_job, jobs())
        for result in tqdm(results, total=len(clips), desc=f"synthesize {task}", unit="clip"):
            if result.failure:
                log.warning("skipped %s", result.failure)
                skipped.append({"clip_id": result.clip_id, "reason": result.failure})
                continue
            writers[result.meta["split"]].write(result.clip_id, result.members)
            backend = result.meta["degradation"].get("backend_label", result.meta["backend"])
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if pool:
            pool.shutdown()
    counts = {split: writer.num_samples for split, writer in writers.items()}
    return {"task": task, "backend": backend, "frame_codec": shard_cfg.frame_codec, "clips": counts, "skipped": skipped}
