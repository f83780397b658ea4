"""Curation on shots and face tracks, on real footage (tests/_footage.py): the crop stage's rows,
the filters judging each track on its own, and tracks of one video never split apart."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from stcvq.data.clips import ClipConfig, plan_clips
from stcvq.data.clips import read_manifest as read_clip_manifest
from stcvq.data.curate import manifest
from stcvq.data.curate.crop import CropConfig, run_crop
from stcvq.data.curate.ingest import embedded_source_dir
from stcvq.data.curate.orientation import OrientationConfig, run_orientation
from stcvq.data.curate.text import track_frames
from stcvq.media import resample
from stcvq.media.video import probe, read_frames, read_video, sample_indices


def raw_row(footage, video_id: str) -> dict:
    info = probe(footage.path)
    return manifest.new_row(video_id=video_id, source_group=video_id, raw_path=str(footage.path),
                            num_frames=footage.num_frames, width=info.width, height=info.height,
                            fps=info.fps, fps_fraction=info.fps_fraction)


@pytest.fixture(scope="module")
def cropped(footage_cuts, footage_pair, tmp_path_factory):
    bikes = embedded_source_dir() / "bikes.mp4"
    info = probe(bikes)
    rows = [raw_row(footage_cuts, "cuts"), raw_row(footage_pair, "pair"),
            manifest.new_row(video_id="bikes", source_group="bikes", raw_path=str(bikes), num_frames=250,
                             width=info.width, height=info.height, fps=info.fps, fps_fraction=info.fps_fraction),
            manifest.drop(manifest.new_row(video_id="gone", source_group="gone"), "unreadable: x", "ingest")]
    out = tmp_path_factory.mktemp("cropped")
    return {r["video_id"]: r for r in run_crop(rows, CropConfig(), 64, out, workers=1)}, out


def test_one_row_per_shot_and_face_track(cropped, footage_cuts):
    rows, _ = cropped
    assert sorted(rows) == ["bikes", "cuts-s0-t0", "cuts-s2-t1", "gone", "pair-s0-t0", "pair-s0-t1"]
    assert rows["gone"]["reason"] == "unreadable: x" and rows["gone"]["drop_stage"] == "ingest"
    bikes = rows["bikes"]
    assert not bikes["keep"] and bikes["reason"] == "no_face" and bikes["drop_stage"] == "crop"
    assert bikes["shots"] == [[0, 30], [30, 76], [76, 137], [137, 187], [187, 242], [242, 250]]
    for video_id in ("cuts-s0-t0", "cuts-s2-t1", "pair-s0-t0", "pair-s0-t1"):
        row = rows[video_id]
        assert row["keep"] and re.fullmatch(r"[A-Za-z0-9_-]+", video_id)
        assert row["source_video"] == video_id.split("-")[0] and row["source_group"] == row["source_video"]
        assert video_id == f"{row['source_video']}-s{row['shot']}-t{row['track']}"
    assert rows["cuts-s0-t0"]["shots"] == [[0, 45], [45, 80], [80, 125]]
    assert [rows[k]["shot_frames"] for k in ("cuts-s0-t0", "cuts-s2-t1")] == [[0, 45], [80, 125]]


def test_track_crops_stay_in_their_shot_and_in_the_frame(cropped):
    rows, _ = cropped
    for row in rows.values():
        if not row["keep"]:
            continue
        first, end = row["track_frames"]
        shot_first, shot_end = row["shot_frames"]
        assert shot_first <= first < end <= shot_end and row["num_frames"] == end - first
        squares = np.array(row["crop_squares"])
        assert squares.shape == (end - first, 3)
        x0, y0, side = squares.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + side <= row["width"]).all()
        assert (y0 + side <= row["height"]).all()  # moved into the frame: no padding in training crops
        assert row["crop_side"] == int(np.median(side))
        assert 0.45 < row["face_proportion"] < 0.62  # a 1.3x square: (1 / 1.3)^2 = 0.59 when the face fits
        assert all(first <= t[0] < end for t in row["face_track"]) and row["face_frames"] == len(row["face_track"])
        info = probe(row["cropped_path"], count_frames=True)
        assert (info.width, info.height, info.codec, info.num_frames) == (64, 64, "ffv1", end - first)


def test_the_crop_is_the_moving_square_of_each_frame(cropped):
    rows, _ = cropped
    row = rows["cuts-s2-t1"]
    first, end = row["track_frames"]
    crop = read_video(row["cropped_path"])
    for i in (0, (end - first) // 2, end - first - 1):
        frame = next(read_frames(row["raw_path"], start=first + i, stop=first + i + 1))
        x0, y0, side = row["crop_squares"][i]
        assert np.array_equal(crop[i], resample.resize(frame[y0:y0 + side, x0:x0 + side], 64, 64))


def test_short_and_small_tracks_are_dropped_with_their_reason(footage_cuts, tmp_path):
    rows = run_crop([raw_row(footage_cuts, "cuts")], CropConfig(min_frames=50), 64, tmp_path / "a")
    assert [r["reason"] for r in rows] == ["too_short: 45 frames < crop.min_frames 50"] * 2
    assert all(r["crop_squares"] and r["track"] is not None and r["cropped_path"] is None for r in rows)
    rows = run_crop([raw_row(footage_cuts, "cuts")], CropConfig(min_crop_side=150), 64, tmp_path / "b")
    small, large = rows
    assert not small["keep"] and re.fullmatch(r"too_small: crop side \d+ px < crop.min_crop_side 150", small["reason"])
    assert large["keep"] and large["crop_side"] >= 150
    assert list((tmp_path / "b").glob("*.mkv")) == [tmp_path / "b" / "cuts-s2-t1.mkv"]


def test_filters_judge_each_track_on_its_own(cropped):
    rows, _ = cropped
    pair = [rows["pair-s0-t0"], rows["pair-s0-t1"]]
    measured = run_orientation(pair, OrientationConfig(sample_frames=4), workers=1)
    for before, after in zip(pair, measured):
        assert after["orientation_frames"] == 4
        assert after["video_id"] == before["video_id"]
    # each track's landmarks are fitted in its own detections: one face left, one right of the seam
    left, right = sorted(measured, key=lambda r: r["face_box"][0])
    assert left["face_box"][2] <= 264 <= right["face_box"][0]
    # text: frames spread over the track's range of the raw video, not over the whole video
    row = rows["cuts-s2-t1"]
    first, end = row["track_frames"]
    raw = read_video(row["raw_path"])
    expected = [first + i for i in sample_indices(end - first, 3)]
    assert len(expected) == 3 and expected[0] == first >= 80
    assert all(np.array_equal(f, raw[i]) for f, i in zip(track_frames(row, 3), expected, strict=True))


def test_tracks_of_one_video_never_straddle_splits(cropped, tmp_path):
    rows, _ = cropped
    kept = [r for r in rows.values() if r["keep"]]
    # group mode: more groups than splits; each video's tracks share its group, so its split
    extra = []
    for name in ("g1", "g2", "g3"):
        extra.append({**rows["pair-s0-t0"], "video_id": f"{name}-s0-t0", "source_video": name, "source_group": name})
    frame = pd.DataFrame(kept + extra)
    clips, _, summary = plan_clips(frame, ClipConfig(length=8, stride=8, splits={"train": 0.5, "val": 0.25,
                                                                               "test": 0.25}))
    assert summary["split_mode"] == "group"
    for source in ("cuts", "pair"):
        assert clips[clips["source_video"] == source]["split"].nunique() == 1
    # time mode (fewer groups than splits): the raw video's frames are cut, so the two tracks of
    # pair (the same raw frames) split at the same raw frame and no raw frame is in two splits
    # (through a parquet manifest, as the clips stage reads it)
    path = manifest.write_manifest(tmp_path / "manifest.parquet", rows.values())
    clips, _, summary = plan_clips(read_clip_manifest(path), ClipConfig(length=8, stride=4))
    assert summary["split_mode"] == "time"
    for source, sub in clips.groupby("source_video"):
        raw = {}
        for r in sub.itertuples():
            for f in range(r.source_first + r.frame_start, r.source_first + r.frame_stop):
                raw.setdefault(f, set()).add(r.split)
        assert all(len(s) == 1 for s in raw.values()), source
    pair = clips[clips["source_video"] == "pair"]
    assert pair["video_id"].nunique() == 2 and pair["split"].nunique() == 3  # the check above is not empty
