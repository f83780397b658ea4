"""Evaluate one task's restoration model on its test split.

Every clip is scored twice against its ground truth with :func:`stcvq.evaluation.metrics.video_metrics`:
the degraded input (what you start from) and the restored output (what the model gives), then
means over the clips (:func:`stcvq.evaluation.metrics.aggregate`), FVD over the whole set, and the time the
model takes per clip. The result is one JSON-ready dict, the DVC stage's
``metrics/evaluate/<task>/<model>-<testset>.json``.

    report = evaluate_task(model, ClipDataset(index, batch_size=None, shuffle=False), load_models(), task="bfvr")

A paired test set (the paper's Table 1 protocol: a folder of degraded videos and a folder of
ground-truth videos matched by name, the first 24 frames of each at 512x512) is scored the same
way, into the same JSON:

    report = evaluate_paired(model, "vfhq-test/lq", "vfhq-test/gt", load_models())

The plots of the paper's Figure 4 are :func:`temporal_profile` (one pixel column stacked over
time) and :func:`frame_grid` (before/after frames), both uint8 RGB images; :func:`write_png`
writes them atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from stcvq.config import check, from_dict
from stcvq.evaluation.metrics import (
    FVDAccumulator,
    MetricModels,
    MetricResult,
    aggregate,
    device_description,
    video_metrics,
)
from stcvq.inference.enhance import ClipRestorer, StreamConfig, restore_stream
from stcvq.io import atomic_path
from stcvq.media.frames import frames_to_tensor, to_uint8_video
from stcvq.media.video import VIDEO_SUFFIXES, VideoError, read_frames

log = logging.getLogger(__name__)

SIDES = ("input", "output")
# no-reference temporal metrics: the ground truth's own value is what a perfect output would score
TEMPORAL = ("flow_score", "warping_error", "flicker_index")


# a model or test set name is one fragment of a stage name (evaluate@<task>-<model>-<testset>) and a
# file name (metrics/evaluate/<task>/<model>-<testset>.json): no "-", "/", "@" or ":" in it
_NAME = re.compile(r"[A-Za-z0-9_.]+")


@dataclasses.dataclass(frozen=True)
class EvaluateTestSetConfig:
    """params.yaml ``evaluate.testsets.<name>``: where the scored clips come from. Both folders
    null: the test split of the task's shards. ``lq_dir`` + ``gt_dir``: a paired test set
    (degraded and ground-truth videos matched by name); ``{task}`` in either path stands for the
    task, so one entry names a folder pair per task."""

    lq_dir: str | None = None
    gt_dir: str | None = None
    frames: int | None = None  # first frames scored per paired video; None: the model's clip_length
    size: int | None = None  # paired videos resized to size x size; None: the model's size

    def __post_init__(self) -> None:
        check((self.lq_dir is None) == (self.gt_dir is None),
              f"lq_dir and gt_dir go together, got lq_dir={self.lq_dir!r}, gt_dir={self.gt_dir!r}")
        check(self.paired or (self.frames is None and self.size is None),
              "frames and size apply to a paired test set only (set lq_dir and gt_dir)")
        check(self.frames is None or self.frames >= 1, f"frames must be >= 1 or null, got {self.frames}")
        check(self.size is None or self.size >= 1, f"size must be >= 1 or null, got {self.size}")

    @property
    def paired(self) -> bool:
        return self.lq_dir is not None

    def folders(self, task: str) -> tuple[str, str]:
        """(lq_dir, gt_dir) of a paired test set for ``task``."""
        assert self.lq_dir is not None and self.gt_dir is not None, "the test split has no folders"
        return self.lq_dir.replace("{task}", task), self.gt_dir.replace("{task}", task)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """params.yaml ``evaluate:``. Weight paths are optional: a metric whose network is missing is
    null with a reason (LPIPS, FVD) or uses the shipped fallback (OpenCV DIS flow, dlib descriptors).

    ``models`` x ``testsets`` (x the tasks) is the evaluate stage's matrix: model ``m`` of task
    ``t`` is the folder ``models/<m>-<t>`` (``stage2``: the pipeline's own)."""

    lpips_weights: str | None = None
    lpips_net: str = "alex"
    i3d_weights: str | None = None
    raft_weights: str | None = None
    arcface_weights: str | None = None
    max_clips: int | None = None  # None: the whole test split
    faces: bool = True  # AKD / IDS / Face-Cons (dlib: ~6 s per clip on CPU)
    profile_column: float = 0.5  # temporal profile column, as a fraction of the width
    grid_frames: int = 4  # frames per row of the before/after grid
    device: str = "cpu"
    models: list[str] = dataclasses.field(default_factory=lambda: ["stage2"])
    testsets: dict[str, EvaluateTestSetConfig] = dataclasses.field(
        default_factory=lambda: {"test": EvaluateTestSetConfig()})

    def __post_init__(self) -> None:
        check(bool(self.models), "evaluate.models must name at least one model")
        check(bool(self.testsets), "evaluate.testsets must name at least one test set")
        for kind, names in (("models", list(self.models)), ("testsets", list(self.testsets))):
            bad = [n for n in names if not isinstance(n, str) or not _NAME.fullmatch(n)]
            check(not bad, f"evaluate.{kind}: {bad} must be letters, digits, '_' or '.' (a name is part of "
                           "the stage name evaluate@<task>-<model>-<testset>)")
            check(len(set(names)) == len(names), f"evaluate.{kind}: a name appears twice in {names}")
        object.__setattr__(self, "testsets", {
            name: spec if isinstance(spec, EvaluateTestSetConfig)
            else from_dict(EvaluateTestSetConfig, spec or {}, where=f"evaluate.testsets.{name}")
            for name, spec in self.testsets.items()})
        check(self.max_clips is None or self.max_clips >= 1,
              f"evaluate.max_clips must be >= 1 or null, got {self.max_clips}")
        check(0.0 <= self.profile_column <= 1.0,
              f"evaluate.profile_column must be in [0, 1], got {self.profile_column}")
        check(self.grid_frames >= 1, f"evaluate.grid_frames must be >= 1, got {self.grid_frames}")

    def testset(self, name: str) -> EvaluateTestSetConfig:
        check(name in self.testsets, f"evaluate.testsets: no test set {name!r}; known: {list(self.testsets)}")
        return self.testsets[name]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def restore_clip(
    model: ClipRestorer, lq: torch.Tensor, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, float]:
    """Restore one (3, T, H, W) clip in one model call; returns the output and the wall seconds.

    The test clips are cut at the model's clip layout (T <= clip_length, H = W = size), so no
    windowing is needed; anything else is an error naming the shapes."""
    _, frames, height, width = lq.shape
    if frames > model.clip_length or (height, width) != (model.size, model.size):
        raise ValueError(f"clip of {frames}x{height}x{width} does not fit the model's "
                         f"{model.clip_length}x{model.size}x{model.size} layout")
    device = torch.device(device)
    with torch.inference_mode():
        batch = lq.unsqueeze(0).to(device)
        _sync(device)
        start = time.perf_counter()
        out = model.restore(batch)
        _sync(device)
        seconds = time.perf_counter() - start
    return out[0].float().cpu(), seconds


def _efficiency(seconds: list[float], frames: list[int], device: str | torch.device) -> dict[str, Any]:
    # the first call pays one-off costs (allocations, kernel selection): left out when there are others
    timed = list(zip(seconds, frames))[1:] or list(zip(seconds, frames))
    total_s, total_f = sum(s for s, _ in timed), sum(f for _, f in timed)
    per_clip = float(np.median([s for s, _ in timed])) if timed else None
    return {
        "seconds_per_clip": per_clip,
        "frames_per_second": total_f / total_s if total_s > 0 else None,
        "seconds_per_24_frames": 24 * total_s / total_f if total_f and total_s > 0 else None,
        "clip_frames": int(np.median([f for _, f in timed])) if timed else None,
        "clips_timed": len(timed),
        "device": device_description(device),
    }


def evaluate_task(
    model: ClipRestorer,
    samples: Iterable[Mapping[str, Any]],
    models_for_metrics: MetricModels,
    *,
    task: str,
    max_clips: int | None = None,
    faces: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Score input (LQ vs HQ) and output (restored vs HQ) of every test clip; mean per metric.
    ``ground_truth`` holds the HQ clips' own temporal metrics (flicker index, warping error, flow
    score): the value a perfect output reaches, to read the other two against.

    ``samples`` yields ``{"hq", "lq": (3, T, H, W) float in [0, 1], "meta": dict}`` (a
    ``ClipDataset(..., batch_size=None, shuffle=False)``). A clip that cannot be restored or
    scored is recorded in ``skipped`` with its error and left out; the rest still count.
    """
    per_clip: list[dict[str, Any]] = []
    scores: dict[str, list[dict[str, MetricResult]]] = {side: [] for side in (*SIDES, "ground_truth")}
    fvd = {side: FVDAccumulator(models_for_metrics) for side in SIDES}
    seconds, frames, skipped = [], [], []
    total = len(samples) if hasattr(samples, "__len__") else None
    if max_clips is not None:
        total = min(total, max_clips) if total is not None else max_clips
    for index, sample in enumerate(tqdm(samples, desc=f"evaluate {task}", unit="clip", total=total)):
        if max_clips is not None and index >= max_clips:
            break
        key = str((sample.get("meta") or {}).get("key", f"clip-{index}"))
        try:
            out, took = restore_clip(model, sample["lq"], device)
            hq, lq, restored = to_uint8_video(sample["hq"]), to_uint8_video(sample["lq"]), to_uint8_video(out)
            clip_scores = {"input": video_metrics(lq, hq, models_for_metrics, faces=faces),
                           "output": video_metrics(restored, hq, models_for_metrics, faces=faces)}
            truth = video_metrics(hq, hq, models_for_metrics, faces=False)
            clip_scores["ground_truth"] = {name: truth[name] for name in TEMPORAL}
            fvd["input"].add(hq, lq)
            fvd["output"].add(hq, restored)
        except ValueError as err:
            log.warning("%s: clip %s skipped: %s", task, key, err)
            skipped.append({"key": key, "error": str(err)})
            continue
        seconds.append(took)
        frames.append(int(hq.shape[0]))
        for side in scores:
            scores[side].append(clip_scores[side])
        per_clip.append({"key": key, **{side: {n: r.value for n, r in clip_scores[side].items()} for side in scores}})

    report: dict[str, Any] = {"task": task, "clips": len(per_clip)}
    reasons: dict[str, dict[str, str]] = {}
    details: dict[str, dict[str, Any]] = {}
    for side in scores:
        summary = aggregate(scores[side]) if scores[side] else {}
        if side in fvd:
            summary["fvd"] = fvd[side].result()
        report[side] = {name: r.value for name, r in summary.items()}
        reasons[side] = {name: r.reason for name, r in summary.items() if r.value is None}
        details[side] = {name: r.details for name, r in summary.items() if r.details}
    report["null_reasons"] = reasons
    report["details"] = details
    report["efficiency"] = _efficiency(seconds, frames, device)
    report["backends"] = models_for_metrics.notes()
    report["skipped"] = skipped
    report["per_clip"] = per_clip
    log.info("%s: %d clips scored, %d skipped", task, len(per_clip), len(skipped))
    return report


# ---------------------------------------------------------------------------------------
# Paired test sets: degraded and ground-truth folders matched by name

def _videos_by_name(folder: Path) -> dict[str, Path]:
    """Video files (by stem) and frame folders (by name) directly inside ``folder``."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            found.setdefault(path.name, []).append(path)
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            found.setdefault(path.stem, []).append(path)
    twice = {name: [p.name for p in paths] for name, paths in found.items() if len(paths) > 1}
    if twice:
        raise ValueError(f"{folder}: more than one video with the same name: {twice}")
    if not found:
        raise ValueError(f"{folder}: no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) or folders of frames")
    return {name: paths[0] for name, paths in found.items()}


def _listed(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def paired_videos(lq_dir: str | Path, gt_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, degraded, ground truth) for every name in both folders, sorted by name. A name
    in only one folder is an error listing them all: a test set scored on a silent subset is
    not the test set."""
    lq, gt = _videos_by_name(Path(lq_dir)), _videos_by_name(Path(gt_dir))
    only_lq, only_gt = sorted(lq.keys() - gt.keys()), sorted(gt.keys() - lq.keys())
    if only_lq or only_gt:
        raise ValueError(f"{lq_dir} and {gt_dir} do not pair up by name: only in {lq_dir}: [{_listed(only_lq)}]; "
                         f"only in {gt_dir}: [{_listed(only_gt)}]")
    return [(name, lq[name], gt[name]) for name in sorted(lq)]


def resize_square(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape[:2] == (size, size):
        return frame
    interp = cv2.INTER_AREA if frame.shape[0] * frame.shape[1] > size * size else cv2.INTER_CUBIC
    return cv2.resize(frame, (size, size), interpolation=interp)


def read_first_frames(path: Path, frames: int, size: int) -> np.ndarray:
    """The first ``frames`` frames of a video file or of a folder of images (in natural name
    order), each resized to ``size`` x ``size`` (the aspect ratio is not kept, as in the
    paper's protocol): (frames, size, size, 3) uint8 RGB. Fewer frames is a ValueError."""
    raw = list(read_frames(path, stop=frames))  # a frame folder reads in natural name order
    if len(raw) < frames:
        raise ValueError(
            f"{path}: has {len(raw)} frames, fewer than the {frames} scored (pass fewer frames to score it)")
    return np.stack([resize_square(frame, size) for frame in raw])


class PairedTestSet:
    """:func:`evaluate_task`'s samples from a paired test set, read one pair at a time: the
    first ``frames`` frames of each video at ``size`` x ``size``. A pair that cannot be read,
    or is shorter than ``frames``, is left out and recorded in ``skipped`` (key, error) of the
    latest pass, so every scored video has the same length."""

    def __init__(self, lq_dir: str | Path, gt_dir: str | Path, frames: int, size: int):
        if frames < 1 or size < 1:
            raise ValueError(f"frames and size must be >= 1, got frames={frames}, size={size}")
        self.frames, self.size = frames, size
        self.pairs = paired_videos(lq_dir, gt_dir)
        self.skipped: list[dict[str, str]] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped = []
        for key, lq_path, gt_path in self.pairs:
            try:
                hq = read_first_frames(gt_path, self.frames, self.size)
                lq = read_first_frames(lq_path, self.frames, self.size)
            except (VideoError, ValueError) as err:
                log.warning("%s skipped: %s", key, err)
                self.skipped.append({"key": key, "error": str(err)})
                continue
            meta = {"key": key, "lq": str(lq_path), "gt": str(gt_path)}
            yield {"hq": frames_to_tensor(hq), "lq": frames_to_tensor(lq), "meta": meta}


class PairedRestorer:
    """``model`` on clips of another layout: windows of the model's clip length, cross-faded
    as in ``stcvq enhance``, when there are more frames; frames resized to the model's size and
    back when the test set's size differs."""

    def __init__(self, model: ClipRestorer, frames: int, size: int, device: str | torch.device = "cpu"):
        self.model, self.clip_length, self.size = model, frames, size
        self.stream = StreamConfig(device=str(device))

    def restore(self, clips: torch.Tensor) -> torch.Tensor:
        restored = []
        for clip in clips:
            frames = restore_stream(list(to_uint8_video(clip)), self.model, self._to_model, self._from_model,
                                    self.stream)
            restored.append(frames_to_tensor(np.stack(list(frames))))
        return torch.stack(restored).to(clips.device)

    def _to_model(self, frame: np.ndarray) -> np.ndarray:
        return resize_square(frame, self.model.size)

    def _from_model(self, restored: np.ndarray, original: np.ndarray) -> np.ndarray:
        return resize_square(restored, self.size)


def paired_restorer(model: ClipRestorer, frames: int, size: int, device: str | torch.device = "cpu") -> ClipRestorer:
    """``model`` itself when its clip layout holds ``frames`` x ``size``^2 (one call per video,
    as in the pipeline), else a :class:`PairedRestorer`."""
    if frames <= model.clip_length and size == model.size:
        return model
    return PairedRestorer(model, frames, size, device)


def evaluate_paired(
    model: ClipRestorer,
    lq_dir: str | Path,
    gt_dir: str | Path,
    models_for_metrics: MetricModels,
    *,
    task: str | None = None,
    frames: int | None = None,
    size: int | None = None,
    max_clips: int | None = None,
    faces: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """:func:`evaluate_task` on a paired test set: the first ``frames`` (default: the model's
    clip length) frames of each video, resized to ``size`` (default: the model's size). The same
    report, with unreadable and too-short pairs in ``skipped``. ``task`` defaults to the model's."""
    frames = model.clip_length if frames is None else frames
    size = model.size if size is None else size
    task = task or getattr(model, "task", None)
    if not task:
        raise ValueError("evaluate_paired: the model has no task; pass task=")
    if max_clips is not None and max_clips < 1:
        raise ValueError(f"max_clips must be >= 1 or None, got {max_clips}")
    samples = PairedTestSet(lq_dir, gt_dir, frames, size)
    log.info("%s: %d pairs from %s and %s, first %d frames at %dx%d",
             task, len(samples), lq_dir, gt_dir, frames, size, size)
    report = evaluate_task(paired_restorer(model, frames, size, device), samples, models_for_metrics,
                           task=task, max_clips=max_clips, faces=faces, device=device)
    report["skipped"] += samples.skipped
    return report


def _column(video: np.ndarray, column: float | int) -> int:
    width = video.shape[2]
    index = int(round(column * (width - 1))) if isinstance(column, float) else int(column)
    if not 0 <= index < width:
        raise ValueError(f"column {column} is outside a video {width} pixels wide")
    return index


def temporal_profile(video: np.ndarray, column: float | int = 0.5, *, time_scale: int = 1) -> np.ndarray:
    """One pixel column of every frame, stacked left to right over time: (H, T * time_scale, 3).

    ``column`` is a pixel index (int) or a fraction of the width (float). Flicker shows as
    vertical stripes, temporal inconsistency as jagged edges (the paper's Figure 4)."""
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (T, H, W, 3) video, got {video.dtype} {video.shape}")
    strip = video[:, :, _column(video, column), :].transpose(1, 0, 2)  # (H, T, 3)
    return np.repeat(strip, time_scale, axis=1) if time_scale > 1 else np.ascontiguousarray(strip)


def _side_by_side(images: Sequence[np.ndarray], gap: int, axis: int) -> np.ndarray:
    parts: list[np.ndarray] = []
    for i, image in enumerate(images):
        if i:
            shape = list(image.shape)
            shape[axis] = gap
            parts.append(np.full(shape, 255, np.uint8))  # white separator
        parts.append(image)
    return np.concatenate(parts, axis=axis)


def profile_comparison(
    videos: Sequence[np.ndarray], column: float | int = 0.5, *, time_scale: int = 4, gap: int = 2
) -> np.ndarray:
    """Temporal profiles side by side (input | output | ground truth), white gaps between."""
    if not videos:
        raise ValueError("profile_comparison needs at least one video")
    return _side_by_side([temporal_profile(v, column, time_scale=time_scale) for v in videos], gap, axis=1)


def frame_grid(rows: Sequence[np.ndarray], frames: int = 4, *, gap: int = 2) -> np.ndarray:
    """Before/after grid: one row per video (input / output / ground truth), ``frames`` evenly
    spaced frames per row. All videos must have the same shape."""
    if not rows:
        raise ValueError("frame_grid needs at least one video")
    shape = rows[0].shape
    if any(r.shape != shape or r.dtype != np.uint8 for r in rows):
        raise ValueError(f"frame_grid videos must share one uint8 shape, got {[r.shape for r in rows]}")
    picks = np.unique(np.linspace(0, shape[0] - 1, min(frames, shape[0])).round().astype(int))
    return _side_by_side([_side_by_side([video[t] for t in picks], gap, axis=1) for video in rows], gap, axis=0)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write a uint8 RGB image as PNG, atomically."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"{path}: expected a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: cv2.imwrite failed")
