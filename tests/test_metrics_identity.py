"""stcvq.evaluation.metrics identity metrics (AKD, IDS, Face-Cons) on the real carphone face video."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stcvq.evaluation.metrics import (
    ArcFaceEmbedder,
    DlibEmbedder,
    akd,
    embedder,
    face_consistency,
    identity_metrics,
    ids,
)
from stcvq.evaluation.metrics.identity import ARCFACE_TEMPLATE, align_arcface, auto_upsample, detect_boxes, five_points
from stcvq.media.video import read_video


@pytest.fixture(scope="module")
def carphone(request) -> np.ndarray:
    path = request.getfixturevalue("carphone_path")
    return read_video(path, stop=60, step=12)  # 5 frames spread over 2 s of a talking face


@pytest.fixture(scope="module")
def boxes(carphone):
    found = detect_boxes(carphone)
    assert all(b is not None for b in found), "the HOG detector (upsample 1) should find every carphone face"
    return found


def test_identical_videos_give_akd_zero_and_ids_one(carphone, boxes):
    distance = akd(carphone, carphone, boxes)
    assert distance.value == 0.0 and distance.details["frames_with_face"] == len(carphone)
    similarity = ids(carphone, carphone, boxes=boxes)
    assert similarity.value == pytest.approx(1.0, abs=1e-9)
    assert similarity.details["descriptor"] == "dlib" and similarity.details["mean_euclidean"] < 1e-9


def test_detection_runs_when_no_boxes_are_given(carphone):
    assert akd(carphone[:2], carphone[:2]).details["frames_with_face"] == 2


def test_a_shifted_face_moves_the_landmarks_by_the_shift(carphone, boxes):
    # the box stays where the ground truth's face is; the predictor follows the face
    shifted = np.roll(carphone, 4, axis=2)  # 4 px to the right
    assert 2.0 < akd(shifted, carphone, boxes).value < 6.0


def test_degradation_lowers_ids_and_raises_akd(carphone, boxes):
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.5) for f in carphone])
    noise = np.random.default_rng(0).integers(0, 256, carphone.shape, dtype=np.uint8)
    ids_blur, ids_noise = ids(blurred, carphone, boxes=boxes), ids(noise, carphone, boxes=boxes)
    assert 1.0 > ids_blur.value > ids_noise.value
    assert ids_blur.details["mean_euclidean"] < ids_noise.details["mean_euclidean"]
    assert 0 < akd(blurred, carphone, boxes).value < akd(noise, carphone, boxes).value


def test_face_consistency_drops_when_the_identity_drifts(carphone, boxes):
    steady = face_consistency(carphone, boxes=boxes)
    assert steady.value > 0.97 and steady.details["anchor_frame"] == 0
    drifted = carphone.copy()
    drifted[2:] = np.random.default_rng(1).integers(0, 256, drifted[2:].shape, dtype=np.uint8)
    assert face_consistency(drifted, boxes=boxes).value < steady.value - 0.03


def test_no_face_gives_none_with_a_reason():
    gray = np.full((3, 64, 64, 3), 128, np.uint8)
    for result in (akd(gray, gray), ids(gray, gray), face_consistency(gray)):
        assert result.value is None and "face" in result.reason
        assert result.details["frames_without_face"] == 3


def test_box_count_must_match_frames(carphone, boxes):
    with pytest.raises(ValueError, match="boxes"):
        ids(carphone, carphone, boxes=boxes[:2])


# ------------------------------------------------------------------ ArcFace option


def test_alignment_maps_template_landmarks_to_themselves():
    landmarks = np.zeros((68, 2))
    landmarks[36:42], landmarks[42:48] = ARCFACE_TEMPLATE[0], ARCFACE_TEMPLATE[1]
    landmarks[30], landmarks[48], landmarks[54] = ARCFACE_TEMPLATE[2], ARCFACE_TEMPLATE[3], ARCFACE_TEMPLATE[4]
    np.testing.assert_allclose(five_points(landmarks), ARCFACE_TEMPLATE, atol=1e-5)
    image = np.random.default_rng(0).integers(0, 256, (140, 150, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_arcface(image, landmarks), image[:112, :112])


# A minimal ONNX file written by hand (the onnx package is not installed): the protobuf fields
# of ModelProto/GraphProto/NodeProto/TensorProto/ValueInfoProto from onnx.proto3.
def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, dims: list[int]) -> bytes:
    shape = b"".join(_field(1, _field(1, d)) for d in dims)
    tensor_type = _field(1, 1) + _field(2, shape)  # elem_type FLOAT
    return _field(1, name) + _field(2, _field(1, tensor_type))


def _tiny_arcface_onnx(weight: np.ndarray) -> bytes:
    """data (1,3,112,112) -> GlobalAveragePool -> Flatten -> MatMul(W) -> embedding (1, D)."""
    nodes = [
        _field(1, "data") + _field(2, "pooled") + _field(4, "GlobalAveragePool"),
        _field(1, "pooled") + _field(2, "flat") + _field(4, "Flatten"),
        _field(1, "flat") + _field(1, "W") + _field(2, "embedding") + _field(4, "MatMul"),
    ]
    init = (b"".join(_field(1, d) for d in weight.shape) + _field(2, 1) + _field(8, "W")
            + _field(9, weight.astype("<f4").tobytes()))
    graph = b"".join(_field(1, n) for n in nodes) + _field(2, "tiny_arcface") + _field(5, init)
    graph += _field(11, _value_info("data", [1, 3, 112, 112]))
    graph += _field(12, _value_info("embedding", [1, weight.shape[1]]))
    opset = _field(1, "") + _field(2, 13)
    return _field(1, 8) + _field(7, graph) + _field(8, opset)


def test_arcface_onnx_option_loads_and_embeds(tmp_path, carphone, boxes):
    weight = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    path = tmp_path / "arcface.onnx"
    path.write_bytes(_tiny_arcface_onnx(weight))
    embed, note = embedder(path)
    assert isinstance(embed, ArcFaceEmbedder) and "ArcFace" in note
    vector = embed(carphone[0], boxes[0])
    # the same computation by hand: aligned crop, scaled to [-1, 1], channel means, @ W, unit norm
    from stcvq.faces import detection

    crop = align_arcface(carphone[0], detection.landmarks68(carphone[0], boxes[0]))
    expected = (((crop.astype(np.float32) - 127.5) / 127.5).mean(axis=(0, 1)) @ weight).astype(np.float64)
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)
    result = ids(carphone, carphone, embed, boxes)
    assert result.value == pytest.approx(1.0) and result.details["descriptor"] == "arcface"


def test_missing_or_broken_arcface_falls_back_to_dlib(tmp_path):
    embed, note = embedder(None)
    assert isinstance(embed, DlibEmbedder) and "no ArcFace" in note
    (tmp_path / "broken.onnx").write_bytes(b"\x00garbage")
    embed, note = embedder(tmp_path / "broken.onnx")
    assert isinstance(embed, DlibEmbedder) and "broken.onnx" in note


def test_identity_metrics_match_the_single_metric_functions(carphone, boxes):
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in carphone])
    together = identity_metrics(blurred, carphone, boxes=boxes)
    assert together["akd"] == akd(blurred, carphone, boxes)
    assert together["ids"] == ids(blurred, carphone, boxes=boxes)
    assert together["face_cons"].value == face_consistency(blurred, boxes=boxes).value


def test_small_frames_are_upsampled_twice_for_detection(carphone):
    small = np.stack([cv2.resize(f[:, 16:160], (64, 64), interpolation=cv2.INTER_AREA) for f in carphone])
    assert auto_upsample(64, 64) == 2 and auto_upsample(144, 176) == 1
    assert sum(b is not None for b in detect_boxes(small)) >= len(small) - 1
