"""Fixed-length clips from the curated videos, and their deterministic train/val/test split.

The split is by the manifest's ``source_group``: a derived video (captioned, upscaled, half
frame rate copy) belongs to its source's group, so do the videos a user declared one group and
near-duplicates (a copy, a re-encode; :mod:`stcvq.data.curate.groups`), and a group never spans two
splits. When there are fewer groups
than splits (the embedded default has one real face source), every video is instead split by
time: the split fractions cut each video's duration into disjoint ranges, the same ranges in
seconds for every video of a group, so a derived copy at another frame rate lines up. The mode
is recorded in every clip row and in the summary.

A manifest row is one face track of a raw video (``source_video``; ``crop``). Tracks of one video
share its ``source_group``, so in group mode they land in one split. In time mode the ranges cut
the RAW video's frames (``track_frames`` places the track in them), so no raw frame, and no face
seen in it, is in two splits, however the video's tracks overlap in time.

Videos that cannot give a clip are recorded with a reason, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from stcvq.config import check
from stcvq.media.video import VideoError, probe, read_frames

log = logging.getLogger(__name__)

CLIP_COLUMNS = [
    "clip_id", "video_id", "source_group", "source_path", "original_path", "split", "split_mode",
    "split_start", "split_stop", "frame_start", "frame_stop", "fps", "height", "width",
    "source_video", "source_first",  # the raw video, and the raw frame index of the cropped video's frame 0
]


@dataclasses.dataclass
class ClipConfig:
    length: int = 8  # frames per clip (paper: 24)
    stride: int | None = None  # frames between clip starts; None: length (no overlap)
    max_per_video: int | None = None  # cap per video and split, spread evenly; None: all
    splits: dict[str, float] = dataclasses.field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    resolution: int = 64  # frames must be resolution x resolution
    seed: int = 0  # decides which group lands in which split

    def __post_init__(self) -> None:
        check(self.length >= 1, f"clips.length {self.length} < 1")
        check(self.stride is None or self.stride >= 1, f"clips.stride {self.stride} < 1")
        check(self.max_per_video is None or self.max_per_video >= 1, "clips.max_per_video must be >= 1 or null")
        check(bool(self.splits), "clips.splits is empty")
        check(all(v > 0 for v in self.splits.values()), f"clips.splits fractions must be > 0: {self.splits}")
        check(abs(sum(self.splits.values()) - 1.0) < 1e-6,
              f"clips.splits fractions sum to {sum(self.splits.values())}, not 1")
        check(all(re.fullmatch(r"[A-Za-z0-9_]+", k) for k in self.splits),
              f"clips.splits names must be [A-Za-z0-9_]: {list(self.splits)}")
        # the 3D VQGAN downsamples space by 8 (docs/design.md, section 2)
        check(self.resolution % 8 == 0,
              f"resolution {self.resolution} is not divisible by 8 (the autoencoder downsamples x8)")


def safe_key(text: str) -> str:
    """A WebDataset-safe key part: no dots (they separate key from extension), no slashes."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "x"


def _group_rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def assign_groups(groups: Iterable[str], splits: dict[str, float], seed: int) -> dict[str, str]:
    """Each group to one split: seeded hash order, counts by largest remainder, >= 1 per split."""
    groups = sorted(set(groups), key=lambda g: _group_rank(seed, g))
    names = list(splits)
    total = len(groups)
    exact = [splits[n] * total for n in names]
    counts = [max(1, int(e)) for e in exact]
    # hand out or take back until the counts add up, by largest remainder
    order = sorted(range(len(names)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    i = 0
    while sum(counts) < total:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > total:
        j = max(range(len(names)), key=lambda k: counts[k] - exact[k])
        counts[j] -= 1
    mapping, start = {}, 0
    for name, count in zip(names, counts):
        for group in groups[start:start + count]:
            mapping[group] = name
        start += count
    return mapping


def _windows(start: int, stop: int, length: int, stride: int, cap: int | None) -> list[int]:
    starts = list(range(start, stop - length + 1, stride))
    if cap is not None and len(starts) > cap:
        picks = np.linspace(0, len(starts) - 1, cap).round().astype(int)
        starts = [starts[i] for i in sorted(set(picks.tolist()))]
    return starts


def plan_clips(manifest: pd.DataFrame, cfg: ClipConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Clip table, skip table (video_id, reason) and a summary, from the curated manifest.

    Reads ``keep``, ``video_id``, ``cropped_path`` and, when present, ``source_group``,
    ``source_path``, ``fps`` and ``num_frames``; frame size and count come from the cropped file.
    """
    missing = [c for c in ("video_id", "cropped_path", "keep") if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}; has {list(manifest.columns)}")
    kept = manifest[manifest["keep"].astype(bool)].sort_values("video_id", kind="stable")
    stride = cfg.stride or cfg.length
    skipped: list[dict[str, str]] = []
    videos: list[dict[str, Any]] = []
    for row in kept.itertuples(index=False):
        row = row._asdict()
        video_id, path = str(row["video_id"]), str(row["cropped_path"])
        try:
            info = probe(path)
        except VideoError as err:
            skipped.append({"video_id": video_id, "reason": f"unreadable: {err}"})
            continue
        if info.height % 8 or info.width % 8:
            reason = f"frame size {info.width}x{info.height} not divisible by 8 ({path})"
            skipped.append({"video_id": video_id, "reason": reason})
            continue
        if (info.height, info.width) != (cfg.resolution, cfg.resolution):
            reason = f"frame size {info.width}x{info.height} != resolution {cfg.resolution} ({path})"
            skipped.append({"video_id": video_id, "reason": reason})
            continue
        num_frames = int(row.get("num_frames") or 0) or info.num_frames
        if num_frames < cfg.length:
            reason = f"too short: {num_frames} frames < clip length {cfg.length}"
            skipped.append({"video_id": video_id, "reason": reason})
            continue
        group = row.get("source_group")
        group = str(group) if group is not None and not pd.isna(group) else video_id
        fps = float(row.get("fps") or 0) or info.fps
        first, raw_frames = _raw_position(row, num_frames)
        source = row.get("source_video")
        videos.append({"video_id": video_id, "path": path, "group": group, "num_frames": num_frames, "fps": fps,
                       "height": info.height, "width": info.width, "source_path": str(row.get("source_path") or ""),
                       "source_video": source if isinstance(source, str) and source else video_id,
                       "source_first": first, "raw_frames": raw_frames})

    groups = sorted({v["group"] for v in videos})
    split_mode = "group" if len(groups) >= len(cfg.splits) else "time"
    if split_mode == "group":
        by_group = assign_groups(groups, cfg.splits, cfg.seed)
    else:
        log.warning("%d source group(s) < %d splits: splitting every video by time instead",
                    len(groups), len(cfg.splits))
    bounds, acc = {}, 0.0
    for name, fraction in cfg.splits.items():
        bounds[name] = (acc, min(1.0, acc + fraction))
        acc += fraction

    rows = []
    for video in videos:
        n, first, raw = video["num_frames"], video["source_first"], video["raw_frames"]
        if split_mode == "group":
            ranges = {by_group[video["group"]]: (0.0, 1.0)}
        else:
            ranges = bounds
        for split, (lo, hi) in ranges.items():
            # the split's range of raw frames, in the cropped video's frame numbers
            start = min(max(int(round(lo * raw)) - first, 0), n)
            stop = min(max(int(round(hi * raw)) - first, 0), n)
            starts = _windows(start, stop, cfg.length, stride, cfg.max_per_video)
            if not starts:
                reason = f"too short: {split} range has {stop - start} frames < clip length {cfg.length}"
                skipped.append({"video_id": video["video_id"], "reason": reason})
            for s in starts:
                rows.append({
                    "clip_id": f"{safe_key(video['video_id'])}-{s:06d}",
                    "video_id": video["video_id"], "source_group": video["group"], "source_path": video["path"],
                    "original_path": video["source_path"],
                    "split": split, "split_mode": split_mode, "split_start": lo, "split_stop": hi,
                    "frame_start": s, "frame_stop": s + cfg.length, "fps": video["fps"],
                    "height": video["height"], "width": video["width"],
                    "source_video": video["source_video"], "source_first": first,
                })
    clips = pd.DataFrame(rows, columns=CLIP_COLUMNS)
    skips = pd.DataFrame(skipped, columns=["video_id", "reason"])
    summary = {
        "split_mode": split_mode,
        "groups": {s: sorted({r["source_group"] for r in rows if r["split"] == s}) for s in cfg.splits},
        "clips": {s: int((clips["split"] == s).sum()) for s in cfg.splits},
        "videos_used": len(videos),
        "skipped": skipped,
    }
    _check_disjoint(clips, split_mode)
    return clips, skips, summary


def _raw_position(row: dict[str, Any], num_frames: int) -> tuple[int, int]:
    """(raw frame of the cropped video's frame 0, raw video's frame count) of a manifest row;
    (0, ``num_frames``) for a row that is not a face track."""
    track, shots = row.get("track_frames"), row.get("shots")
    if not isinstance(track, (list, tuple, np.ndarray)) or len(track) != 2:
        return 0, num_frames
    has_shots = isinstance(shots, (list, tuple, np.ndarray)) and len(shots) > 0
    return int(track[0]), int(shots[-1][1]) if has_shots else int(track[1])


def _check_disjoint(clips: pd.DataFrame, split_mode: str) -> None:
    """Guard the one promise that matters: no source material in two splits."""
    if split_mode == "group":
        per_group = clips.groupby("source_group")["split"].nunique()
        bad = per_group[per_group > 1]
        if len(bad):
            raise AssertionError(f"groups in several splits: {list(bad.index)}")
    else:
        for source, sub in clips.groupby("source_video"):
            spans = [(r.split, r.source_first + r.frame_start, r.source_first + r.frame_stop, r.clip_id)
                     for r in sub.itertuples()]
            for split_a, start_a, stop_a, id_a in spans:
                for split_b, start_b, stop_b, id_b in spans:
                    if split_a != split_b and start_a < stop_b and start_b < stop_a:
                        raise AssertionError(f"{source}: clips {id_a} and {id_b} share raw frames across splits")


def iter_clip_frames(clips: pd.DataFrame) -> Iterator[tuple[dict[str, Any], np.ndarray | None, str | None]]:
    """(clip row, frames (T, H, W, 3) uint8 or None, skip reason or None), one decode per video.

    Streams: a clip is yielded as soon as its last frame is decoded, so memory holds only the
    clips in flight. Videos come in order of first appearance, clips by end frame. A clip whose
    frames cannot all be decoded comes back with frames None and a reason.
    """
    for path, sub in clips.groupby("source_path", sort=False):
        pending = sorted(sub.to_dict("records"), key=lambda r: (r["frame_stop"], r["frame_start"]))
        buffers: dict[str, list[np.ndarray]] = {r["clip_id"]: [] for r in pending}
        error = None
        try:
            for index, frame in enumerate(read_frames(path, stop=pending[-1]["frame_stop"])):
                for r in pending:
                    if r["frame_start"] <= index < r["frame_stop"]:
                        buffers[r["clip_id"]].append(frame)
                while pending and pending[0]["frame_stop"] == index + 1:
                    r = pending.pop(0)
                    yield r, np.stack(buffers.pop(r["clip_id"])), None
        except VideoError as err:
            error = str(err)
        for r in pending:
            got, need = len(buffers[r["clip_id"]]), r["frame_stop"] - r["frame_start"]
            ending = f" ({error})" if error else " (video ended)"
            reason = f"{path}: clip {r['clip_id']} got {got} of {need} frames{ending}"
            yield r, None, reason


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: manifest must be .parquet or .csv")
