"""Unit tests of the curation filters on hand-made inputs (no video decoding)."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from stcvq.config import ConfigError, from_dict
from stcvq.data.curate import manifest
from stcvq.data.curate.crop import CropConfig, face_proportion, track_id
from stcvq.data.curate.ingest import burn_caption, colorfulness, safe_id
from stcvq.data.curate.motion import MotionConfig, motion_intensity
from stcvq.data.curate.orientation import OrientationConfig, is_side_face, side_ratio
from stcvq.data.curate.text import PaddleOCRDetector, TextConfig, measure_text, polygon_fraction
from stcvq.faces.detection import FaceBox

# --- orientation: side ratio on hand-made landmarks -------------------------------------

def landmarks(right_eye_x: float, nose_x: float, left_eye_x: float, roll_degrees: float = 0.0) -> np.ndarray:
    """68 points, all at the face centre except the outer eye corners (36, 45) and nose tip (30)."""
    points = np.zeros((68, 2))
    points[:] = (nose_x, 60.0)
    points[36] = (right_eye_x, 40.0)
    points[45] = (left_eye_x, 40.0)
    points[30] = (nose_x, 60.0)
    if roll_degrees:
        t = math.radians(roll_degrees)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        points = (points - points[30]) @ rot.T + points[30]
    return points


def test_side_ratio_is_the_papers_formula():
    assert side_ratio(landmarks(40, 60, 80)) == pytest.approx(1.0)  # |40-60| / |80-60|
    assert side_ratio(landmarks(40, 70, 80)) == pytest.approx(3.0)  # 30 / 10
    assert side_ratio(landmarks(52, 60, 80)) == pytest.approx(0.4)  # 8 / 20
    assert side_ratio(landmarks(40, 80, 80)) == math.inf


def test_side_face_rule_thresholds_and_nose_outside():
    assert not is_side_face(landmarks(40, 60, 80))  # frontal, alpha 1
    assert not is_side_face(landmarks(50, 60, 80))  # alpha 0.5: inside [0.4, 2.5]
    assert is_side_face(landmarks(54, 60, 80))  # alpha 0.3 < 0.4
    assert is_side_face(landmarks(40, 74, 80))  # alpha 34/6 > 2.5
    # the nose past the far eye corner: alpha |40-85| / |80-85| = 9 and outside
    assert is_side_face(landmarks(40, 85, 80))
    # nose outside although alpha is "frontal": right eye 20 left of nose, left eye 20 further left
    assert side_ratio(landmarks(40, 60, 40 + 2 * 20 - 40)) == pytest.approx(1.0)
    assert is_side_face(landmarks(40, 60, 40 + 2 * 20 - 40))
    # the thresholds are parameters
    assert not is_side_face(landmarks(54, 60, 80), min_side_ratio=0.25)


def test_roll_correction_ignores_head_tilt_but_keeps_yaw():
    tilted = landmarks(40, 60, 80, roll_degrees=35)  # frontal face rotated in the image plane
    assert side_ratio(tilted, roll_correction=True) == pytest.approx(1.0)
    assert side_ratio(tilted, roll_correction=False) != pytest.approx(1.0)
    turned_and_tilted = landmarks(54, 60, 80, roll_degrees=20)  # alpha 0.3 in the face's own frame
    assert side_ratio(turned_and_tilted, roll_correction=True) == pytest.approx(0.3)
    assert is_side_face(turned_and_tilted, roll_correction=True)


def test_side_ratio_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="68, 2"):
        side_ratio(np.zeros((5, 2)))


def test_orientation_config_validates():
    with pytest.raises(ConfigError):
        from_dict(OrientationConfig, {"min_side_ratio": 1.5})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(OrientationConfig, {"max_side_ration": 2.5})


# --- motion intensity on synthetic frames ------------------------------------------------

def gray_rgb(value: np.ndarray) -> np.ndarray:
    return np.repeat(value.astype(np.uint8)[..., None], 3, axis=2)


def test_motion_intensity_counts_pixels_above_threshold():
    base = np.full((32, 48), 100, np.uint8)
    moved = base.copy()
    moved[0:10, 0:10] = 150  # 100 pixels change by 50
    moved[20:22, 0:5] = 110  # 10 pixels change by exactly the threshold: not counted (> threshold)
    frames = [gray_rgb(base), gray_rgb(moved), gray_rgb(moved), gray_rgb(base)]
    pairs, mean, norm = motion_intensity(frames, threshold=10)
    # pair counts: 100, 0, 100 -> mean 200/3
    assert pairs == 3
    assert mean == pytest.approx(200 / 3)
    assert norm == pytest.approx(200 / 3 / (32 * 48))
    # a lower threshold also counts the 10-level change
    assert motion_intensity(frames, threshold=9)[1] == pytest.approx((110 + 0 + 110) / 3)


def test_motion_intensity_static_and_single_frame():
    frame = gray_rgb(np.full((8, 8), 7))
    assert motion_intensity([frame] * 5, threshold=0) == (4, 0.0, 0.0)
    assert motion_intensity([frame], threshold=10) == (0, 0.0, 0.0)


def test_motion_intensity_uses_luma_of_rgb():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[..., 1] = 255  # pure green: BT.601 luma 0.587 * 255 = 150
    assert motion_intensity([a, b], threshold=149)[1] == 16
    assert motion_intensity([a, b], threshold=151)[1] == 0


def test_motion_config_validates():
    with pytest.raises(ConfigError):
        from_dict(MotionConfig, {"threshold": 300})


# --- crop: row ids, face proportion, config ------------------------------------------------

def box(x0, y0, x1, y1, score=1.0):
    return FaceBox(x0, y0, x1, y1, score)


def test_track_ids_are_webdataset_keys():
    key = track_id("carphone_x4", 2, 11)
    assert key == "carphone_x4-s2-t11" and re.fullmatch(r"[A-Za-z0-9_-]+", key)


def test_face_proportion_is_mean_face_area_over_its_frames_square():
    squares = np.array([[0, 0, 40], [10, 10, 40]])
    faces = [(5, box(10, 10, 30, 30)), (6, box(20, 20, 40, 40))]
    assert face_proportion(faces, squares, first=5) == pytest.approx(400 / 1600)
    # a face half outside its square counts only its inside part
    assert face_proportion([(0, box(-10, 0, 10, 20))], np.array([[0, 0, 20]]), first=0) == pytest.approx(200 / 400)


def test_crop_config_validates_in_one_line():
    with pytest.raises(ConfigError, match=r"^params.yaml:crop.faces: max_faces must be >= 1, got 0$"):
        from_dict(CropConfig, {"faces": {"max_faces": 0}}, where="params.yaml:crop")
    with pytest.raises(ConfigError, match=r"^params.yaml:crop.faces: min_face must be >= 1 \(pixels\), got 0$"):
        from_dict(CropConfig, {"faces": {"min_face": 0}}, where="params.yaml:crop")
    with pytest.raises(ConfigError, match="crop.faces.detector"):
        from_dict(CropConfig, {"faces": {"detector": "mtcnn"}}, where="params.yaml:crop")
    with pytest.raises(ConfigError, match="crop.min_frames must be >= 1"):
        from_dict(CropConfig, {"min_frames": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(CropConfig, {"sample_frames": 16})


# --- text filter with a stand-in detector --------------------------------------------------

class FakeDetector:
    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, rgb):
        return self.boxes


def test_polygon_fraction():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    assert polygon_fraction(square, 20, 10) == pytest.approx(0.5)


def test_text_rule_uses_score_threshold_and_box_size(monkeypatch, tmp_path):
    import importlib

    text_module = importlib.import_module("stcvq.data.curate.text")
    from stcvq.media.video import write_video

    path = tmp_path / "v.mkv"
    write_video(path, [np.zeros((40, 40, 3), np.uint8)] * 3, 10, codec="ffv1", pix_fmt="rgb24")
    row = manifest.new_row(video_id="v", raw_path=str(path), num_frames=3)
    line = np.array([[2, 30], [38, 30], [38, 36], [2, 36]], float)  # a caption-like line
    whole = np.array([[0, 0], [40, 0], [40, 40], [0, 40]], float)  # a whole-frame "box"
    config = TextConfig(score_threshold=0.7, sample_frames=2)

    def run(boxes):
        monkeypatch.setattr(text_module, "get_detector", lambda backend, side: FakeDetector(boxes))
        return measure_text(row, config)

    out = run([(line, 0.8)])
    assert not out["keep"] and out["reason"] == "text" and out["text_boxes"] == 2 and out["text_frames"] == 2
    out = run([(line, 0.6)])
    assert out["keep"] and out["text_score"] == pytest.approx(0.6) and out["text_boxes"] == 0
    out = run([(whole, 0.95)])  # too large to be a text line
    assert out["keep"] and out["text_score"] == 0.0
    config = TextConfig(score_threshold=0.7, sample_frames=2, enabled=False)  # filter ablation
    out = run([(line, 0.8)])
    assert out["keep"] and out["text_boxes"] == 2, "a disabled filter still measures, drops nothing"


def test_paddleocr_backend_says_how_to_install_it():
    pytest.importorskip("numpy")
    try:
        import paddleocr  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"stcvq\[paddle\]"):
            PaddleOCRDetector()
    else:  # pragma: no cover - only where the optional extra is installed
        pytest.skip("paddleocr is installed; the missing-backend message does not apply")


# --- ingest helpers and the manifest ------------------------------------------------------

def test_safe_id_has_no_dots_or_slashes():
    assert safe_id("clips/a.b c.mp4") == "clips_a_b_c_mp4"
    assert safe_id("...") == "video"


def test_caption_is_burned_into_the_bottom_band():
    frame = np.full((144, 176, 3), 128, np.uint8)
    out = burn_caption(frame, "BREAKING NEWS")
    assert np.array_equal(out[:100], frame[:100])  # the top is untouched
    band = out[120:]
    assert (band == 0).mean() > 0.5 and (band > 200).sum() > 50  # black band with white text


def test_colorfulness_is_zero_for_gray():
    gray = gray_rgb(np.arange(64, dtype=np.uint8).reshape(8, 8))
    assert colorfulness([gray]) == 0.0
    color = gray.copy()
    color[..., 0] = 255
    assert colorfulness([color]) > 50


def rows_for_manifest():
    a = manifest.new_row(video_id="b", source_group="g", width=10, face_box=[1, 2, 3, 4],
                         face_track=[[0, 1, 2, 3, 4], [5, 1, 2, 3, 4]])
    b = manifest.drop(manifest.new_row(video_id="a", source_group="g"), "unreadable: moov atom not found", "ingest")
    c = manifest.drop(manifest.new_row(video_id="c", source_group="h"), "no_face", "crop")
    return [a, b, c]


def test_manifest_roundtrip_sorted_and_byte_identical(tmp_path):
    rows = rows_for_manifest()
    p1 = manifest.write_manifest(tmp_path / "m1.parquet", rows)
    p2 = manifest.write_manifest(tmp_path / "m2.parquet", list(reversed(rows)))
    assert p1.read_bytes() == p2.read_bytes()  # same rows, any order -> same bytes
    back = manifest.read_manifest(p1)
    assert [r["video_id"] for r in back] == ["a", "b", "c"]
    assert back[1]["face_track"] == [[0, 1, 2, 3, 4], [5, 1, 2, 3, 4]]
    assert back[0]["keep"] is False and back[0]["drop_stage"] == "ingest"
    assert back[1]["keep"] is True and back[1]["reason"] is None
    assert pq.read_schema(p1).names == manifest.COLUMN_NAMES


def test_manifest_rejects_duplicates_and_unknown_columns(tmp_path):
    row = manifest.new_row(video_id="x")
    with pytest.raises(ValueError, match="duplicate"):
        manifest.write_manifest(tmp_path / "m.parquet", [row, row])
    with pytest.raises(KeyError):
        manifest.new_row(video_id="x", face_size=3)


def test_summary_counts_reason_categories_and_source_videos():
    stats = manifest.summary(rows_for_manifest())
    assert stats == {"videos": 3, "source_videos": 3, "kept": 1, "dropped": 2,
                     "reasons": {"no_face": 1, "unreadable": 1}, "kept_groups": 1}
    # two face tracks of one raw video: two rows, one source video
    tracks = [manifest.new_row(video_id=f"v-s0-t{t}", source_video="v", source_group="v") for t in (0, 1)]
    assert manifest.summary(tracks)["videos"] == 2 and manifest.summary(tracks)["source_videos"] == 1


def test_runner_records_one_failure_and_keeps_the_rest():
    from stcvq.data.curate.runner import run_stage
    from stcvq.media.video import VideoError

    def measure(row, config):
        if row["video_id"] == "bad":
            raise VideoError("data/raw/bad.mp4: unreadable: Invalid data found")
        if row["video_id"] == "boom":
            raise RuntimeError("kaput")
        return manifest.update(row, {"width": config})

    rows = [manifest.new_row(video_id=v) for v in ("ok", "bad", "boom")]
    rows.append(manifest.drop(manifest.new_row(video_id="gone"), "no_face", "crop"))
    out = run_stage("test", measure, rows, 7, workers=1)
    assert [r["video_id"] for r in out] == ["ok", "bad", "boom", "gone"]
    assert out[0]["keep"] and out[0]["width"] == 7
    assert out[1]["reason"] == "unreadable: Invalid data found" and out[1]["drop_stage"] == "test"
    assert out[2]["reason"] == "error: RuntimeError: kaput"
    assert out[3]["reason"] == "no_face" and out[3]["width"] is None  # earlier drops pass through


def crash_on_bad(row, config):
    """A measure that kills its worker process on one video (stands in for a native crash)."""
    if row["video_id"] == "bad":
        os._exit(3)
    return manifest.update(row, {"width": config})


def test_a_worker_that_dies_drops_only_its_video():
    from stcvq.data.curate.runner import run_stage

    rows = [manifest.new_row(video_id=v) for v in ("a", "bad", "c", "d")]
    out = run_stage("test", crash_on_bad, rows, 5, workers=2)
    assert [r["video_id"] for r in out] == ["a", "bad", "c", "d"]
    assert [r["keep"] for r in out] == [True, False, True, True]
    assert out[1]["reason"] == "error: worker process died"
    assert all(r["width"] == 5 for r in out if r["keep"])
