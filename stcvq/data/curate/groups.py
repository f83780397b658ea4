"""Source groups: the videos that must land on one side of a train/val/test split.

``ingest.groups`` declares a user folder's groups (the embedded default has its own):

* ``file``: every video is its own group;
* ``folder``: the top-level sub-folder of ``ingest.folder`` a video sits in (VFHQ-style
  ``<source>/<clip>.mp4`` or ``<source>/<clip>/<frames>``); a video directly in the folder is
  its own group;
* a ``.csv`` (header ``path,group``) or ``.json`` (``{"path": "group"}``) mapping file, paths
  relative to ``ingest.folder``; a video it does not name is its own group.

Near-duplicates then join one group whatever was declared, so a copy or a re-encode of the same
frames never sits in train and test at once. A video's fingerprint is, per sampled frame, a
64-bit difference hash: an 8 x 9 gray thumbnail of block means (integer sums, no resampler), one
bit per horizontally adjacent pair, set when the right block is brighter. The distance of two
videos is the fraction of differing bits over their same-position frames: near zero for a
re-encode or an upscale, about one half for unrelated videos (``benchmarks/bench_fingerprint.py``
measures both).

The manifest records the outcome: ``source_group``, and ``group_reason`` (``file``, ``folder``,
``mapping``, ``embedded``, or ``near_duplicate: ...`` naming the matching pair and its distance).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path, PurePosixPath

import numpy as np

from stcvq.config import ConfigError, check

log = logging.getLogger(__name__)

GROUP_MODES = ("file", "folder")
MAPPING_SUFFIXES = (".csv", ".json")
HASH_ROWS, HASH_COLS = 8, 9  # thumbnail blocks: 8 x 8 = 64 comparisons per frame


def check_groups_param(value: str) -> None:
    check(value in GROUP_MODES or Path(value).suffix.lower() in MAPPING_SUFFIXES,
          f"ingest.groups must be one of {list(GROUP_MODES)} or a .csv/.json mapping file, got {value!r}")


def read_mapping(path: str | Path) -> dict[str, str]:
    """``{relative path: group}`` from a CSV (``path,group``) or JSON mapping file; any fault is a
    one-line ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: ingest.groups mapping file not found")
    pairs: list[tuple[object, object]] = []
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: expected a JSON object {{\"path\": \"group\"}}, got {type(data).__name__}")
            pairs = list(data.items())
        else:
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or not {"path", "group"} <= set(reader.fieldnames):
                    raise ConfigError(f"{path}: needs a header with columns path,group; got {reader.fieldnames}")
                pairs = [(r["path"], r["group"]) for r in reader]
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{path}: unreadable mapping file: {' '.join(str(err).split())}") from None
    mapping: dict[str, str] = {}
    for line, (key, group) in enumerate(pairs, start=2 if path.suffix.lower() == ".csv" else 1):
        where = f"line {line}" if path.suffix.lower() == ".csv" else f"entry {line}"
        if not isinstance(key, str) or not key.strip() or not isinstance(group, str) or not group.strip():
            raise ConfigError(f"{path}: {where}: path and group must be non-empty text, got {key!r} -> {group!r}")
        key = normalise(key)
        if mapping.get(key, group.strip()) != group.strip():
            raise ConfigError(f"{path}: {where}: {key} is mapped to both {mapping[key]!r} and {group.strip()!r}")
        mapping[key] = group.strip()
    if not mapping:
        raise ConfigError(f"{path}: the mapping file names no videos")
    return mapping


def normalise(relative: str) -> str:
    """'./a//b/' -> 'a/b': mapping keys and video paths compare in one form."""
    return PurePosixPath(relative.strip().replace("\\", "/")).as_posix().removeprefix("./").rstrip("/")


def declared_groups(videos: dict[str, str], groups: str) -> dict[str, tuple[str, str]]:
    """``{video_id: (group, reason)}`` for ``videos`` (``{video_id: path relative to the folder}``)."""
    if groups == "file":
        return {vid: (vid, "file") for vid in videos}
    if groups == "folder":
        out = {}
        for vid, rel in videos.items():
            parts = PurePosixPath(rel).parts
            out[vid] = (parts[0], "folder") if len(parts) > 1 else (vid, "file")
        return out
    mapping = read_mapping(groups)
    named = {normalise(rel): vid for vid, rel in videos.items()}
    unknown = sorted(set(mapping) - set(named))
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise ConfigError(f"{groups}: {len(unknown)} path(s) name no video under ingest.folder: {shown}")
    unmapped = len(videos) - len(mapping)
    if unmapped:
        log.warning("%s names %d of %d videos; the other %d are their own groups",
                    groups, len(mapping), len(videos), unmapped)
    return {vid: (mapping[normalise(rel)], "mapping") if normalise(rel) in mapping else (vid, "file")
            for vid, rel in videos.items()}


def frame_hash(frame: np.ndarray) -> np.ndarray:
    """64 bools: the difference hash of one RGB frame (see the module docstring)."""
    rgb = frame.astype(np.int64)
    gray = rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114  # BT.601 luma x 1000, exact
    h, w = gray.shape
    if h < HASH_ROWS or w < HASH_COLS:
        raise ValueError(f"frame {w}x{h} is smaller than the {HASH_COLS}x{HASH_ROWS} fingerprint grid")
    rows = np.linspace(0, h, HASH_ROWS + 1).round().astype(int)
    cols = np.linspace(0, w, HASH_COLS + 1).round().astype(int)
    sums = np.add.reduceat(np.add.reduceat(gray, rows[:-1], axis=0), cols[:-1], axis=1)
    means = sums / np.outer(np.diff(rows), np.diff(cols))
    return (means[:, 1:] > means[:, :-1]).ravel()


def fingerprint(frames: list[np.ndarray]) -> str:
    """Hex of the frames' hashes in order: 16 hex digits per frame."""
    return np.packbits(np.concatenate([frame_hash(f) for f in frames])).tobytes().hex()


def _bits(hex_digest: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_digest), dtype=np.uint8))


def near_duplicate_pairs(fingerprints: dict[str, str], max_distance: float) -> list[tuple[float, str, str]]:
    """(distance, id_a, id_b) with id_a < id_b for every pair at or below ``max_distance``,
    sorted; fingerprints of different lengths (different frame counts) are not compared."""
    by_length: dict[int, list[str]] = {}
    for vid in sorted(fingerprints):
        by_length.setdefault(len(fingerprints[vid]), []).append(vid)
    pairs = []
    for ids in by_length.values():
        bits = np.stack([_bits(fingerprints[v]) for v in ids]).astype(np.float32)
        total = bits.shape[1]
        for start in range(0, len(ids), 1024):  # bounded memory: 1024 x N distances at a time
            block = bits[start:start + 1024]
            differing = np.rint(block @ (1 - bits).T + (1 - block) @ bits.T)  # exact: counts < 2^24
            for i, j in zip(*np.nonzero(differing <= max_distance * total)):
                if start + i < j:
                    pairs.append((float(differing[i, j]) / total, ids[start + i], ids[j]))
    return sorted(pairs)


def merge_near_duplicates(rows: list[dict], max_distance: float | None) -> list[dict]:
    """Rows with near-duplicate videos' groups joined (the group named first in sort order wins)."""
    kept = {r["video_id"]: r for r in rows if r["keep"] and r.get("fingerprint")}
    if max_distance is None or len(kept) < 2:
        return rows
    parent: dict[str, str] = {}

    def root(group: str) -> str:
        while parent.get(group, group) != group:
            group = parent[group]
        return group

    best: dict[str, tuple[float, str, str]] = {}  # declared group -> its closest match in another group
    for distance, a, b in near_duplicate_pairs({v: r["fingerprint"] for v, r in kept.items()}, max_distance):
        ga, gb = kept[a]["source_group"], kept[b]["source_group"]
        if ga == gb:
            continue
        for group in (ga, gb):
            best.setdefault(group, (distance, a, b))
        ra, rb = root(ga), root(gb)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    out = []
    for row in rows:
        declared = row["source_group"]
        final = root(declared) if row["video_id"] in kept else declared
        if final != declared:
            distance, a, b = best[declared]
            row = {**row, "source_group": final,
                   "group_reason": f"near_duplicate: joined {final} ({a} ~ {b}, distance {distance:.3f})"}
            log.info("ingest: %s: group %s joins %s (%s ~ %s, distance %.3f)",
                     row["video_id"], declared, final, a, b, distance)
        out.append(row)
    return out
