"""Clip windows and the train/val/test split: by source group, or by time with one source."""

from __future__ import annotations

import numpy as np
import pytest
from _synthesis_data import carphone_crop, manifest_for

from stcvq.config import ConfigError, from_dict
from stcvq.data.clips import ClipConfig, assign_groups, iter_clip_frames, plan_clips, safe_key
from stcvq.media.video import read_video, write_video


@pytest.fixture(scope="module")
def crops(carphone_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    full = carphone_crop(carphone_path, folder / "carphone.mkv")
    frames = read_video(full)
    half = write_video(folder / "carphone_halffps.mkv", frames[::2], 14.985, codec="ffv1", pix_fmt="rgb24")
    return {"full": full, "half": half, "frames": frames}


def test_time_split_with_one_source_group(crops):
    manifest = manifest_for([
        {"video_id": "carphone", "source_group": "carphone", "cropped_path": str(crops["full"]), "num_frames": 120},
        {"video_id": "carphone_halffps", "source_group": "carphone", "cropped_path": str(crops["half"]),
         "num_frames": 60, "fps": 14.985},
    ])
    clips, skips, summary = plan_clips(manifest, ClipConfig(length=8))
    assert summary["split_mode"] == "time" and set(clips["split_mode"]) == {"time"}
    assert set(clips["split"]) == {"train", "val", "test"}
    for video_id, sub in clips.groupby("video_id"):
        n = 120 if video_id == "carphone" else 60
        for split, part in sub.groupby("split"):
            lo, hi = part["split_start"].iloc[0], part["split_stop"].iloc[0]
            # every clip lies inside its split's time range: the same seconds for both videos
            assert (part["frame_start"] >= round(lo * n)).all() and (part["frame_stop"] <= round(hi * n)).all()
    # the half-rate copy's val range has 9 frames: one 8-frame clip; nothing overlaps across splits
    assert len(clips[(clips.video_id == "carphone_halffps") & (clips.split == "val")]) == 1
    assert clips["clip_id"].is_unique and not clips["clip_id"].str.contains(r"\.").any()
    assert skips.empty


def test_group_split_keeps_groups_whole(crops):
    rows = []
    for group in ["a", "b", "c", "d", "e"]:
        for video_id in (group, f"{group}_x4"):
            rows.append({"video_id": video_id, "source_group": group, "cropped_path": str(crops["full"]),
                         "num_frames": 120})
    clips, _, summary = plan_clips(manifest_for(rows), ClipConfig(length=8, max_per_video=3))
    assert summary["split_mode"] == "group"
    assert (clips.groupby("source_group")["split"].nunique() == 1).all()
    assert all(summary["clips"][s] > 0 for s in ("train", "val", "test"))
    assert clips.groupby("video_id").size().max() == 3
    again, _, _ = plan_clips(manifest_for(rows), ClipConfig(length=8, max_per_video=3))
    assert again.equals(clips)


def test_assign_groups_counts_and_seed():
    groups = [f"g{i}" for i in range(10)]
    mapping = assign_groups(groups, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    counts = {s: list(mapping.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 7, "val": 2, "test": 1} or counts == {"train": 7, "val": 1, "test": 2}
    assert assign_groups(groups, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1) != mapping


def test_short_odd_sized_and_unreadable_videos_are_recorded(crops, tmp_path):
    short = write_video(tmp_path / "short.mkv", crops["frames"][:5], 30, codec="ffv1", pix_fmt="rgb24")
    odd = write_video(tmp_path / "odd.mkv", crops["frames"][:20, :60, :60], 30, codec="ffv1", pix_fmt="rgb24")
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(b"not a video at all")
    manifest = manifest_for([
        {"video_id": "short", "source_group": "s", "cropped_path": str(short), "num_frames": 5},
        {"video_id": "odd", "source_group": "o", "cropped_path": str(odd), "num_frames": 20},
        {"video_id": "broken", "source_group": "b", "cropped_path": str(broken), "num_frames": 20},
        {"video_id": "good", "source_group": "g", "cropped_path": str(crops["full"]), "num_frames": 120},
        {"video_id": "dropped", "source_group": "g", "cropped_path": str(broken), "keep": False},
    ])
    clips, skips, _ = plan_clips(manifest, ClipConfig(length=8))
    reasons = dict(zip(skips["video_id"], skips["reason"]))
    assert "too short: 5 frames < clip length 8" in reasons["short"]
    assert "not divisible by 8" in reasons["odd"]
    assert reasons["broken"].startswith("unreadable")
    assert "dropped" not in reasons and set(clips["video_id"]) == {"good"}


def test_resolution_must_divide_by_8():
    with pytest.raises(ConfigError, match="divisible by 8"):
        from_dict(ClipConfig, {"resolution": 60})
    with pytest.raises(ConfigError, match="sum"):
        from_dict(ClipConfig, {"splits": {"train": 0.5, "val": 0.1}})


def test_iter_clip_frames_gives_exact_frames_and_reports_missing(crops):
    manifest = manifest_for([{"video_id": "carphone", "source_group": "carphone", "cropped_path": str(crops["full"]),
                              "num_frames": 120}])
    clips, _, _ = plan_clips(manifest, ClipConfig(length=8, stride=6))  # overlapping windows
    seen = 0
    for row, frames, reason in iter_clip_frames(clips):
        assert reason is None
        assert np.array_equal(frames, crops["frames"][row["frame_start"]:row["frame_stop"]])
        seen += 1
    assert seen == len(clips)
    # a clip table that promises frames the file does not have (e.g. a stale manifest)
    bad = clips.head(1).copy()
    bad[["frame_start", "frame_stop"]] = [118, 126]
    (row, frames, reason), = list(iter_clip_frames(bad))
    assert frames is None and "got 2 of 8 frames" in reason


def test_safe_key():
    assert safe_key("car.phone/x4 v2") == "car_phone_x4_v2"
