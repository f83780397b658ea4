"""Face tracks on real footage built from carphone, bikes and Big Buck Bunny (tests/_footage.py).

Each footage is decoded and searched for faces once (every frame); the tests link those
detections under several configs (:func:`tracks_from_detections`), as ``find_tracks`` does after
its own detection pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stcvq.config import ConfigError, from_dict
from stcvq.faces.shots import shots_from_cuts
from stcvq.faces.tracks import (
    TrackConfig,
    crop_square,
    detect_video,
    detection_frames,
    find_tracks,
    fit_square,
    tracks_from_detections,
)

EVERY_FRAME = TrackConfig(detect_every=1)


@dataclasses.dataclass
class Searched:
    footage: object
    shots: list
    detections: list  # (frame, boxes) of every frame

    def tracks(self, config: TrackConfig = TrackConfig()):
        """Tracks from the detections ``config.detect_every`` would have made."""
        wanted = {f for shot in self.shots for f in detection_frames(shot, config.detect_every)}
        return tracks_from_detections(self.shots, [(f, b) for f, b in self.detections if f in wanted], config)


def searched(footage) -> Searched:
    shots = shots_from_cuts(footage.cuts, footage.num_frames)  # test_faces_shots checks these are found
    return Searched(footage, shots, detect_video(footage.path, shots, EVERY_FRAME))


@pytest.fixture(scope="module")
def cuts(footage_cuts):
    return searched(footage_cuts)


@pytest.fixture(scope="module")
def pan(footage_pan):
    return searched(footage_pan)


@pytest.fixture(scope="module")
def pair(footage_pair):
    return searched(footage_pair)


@pytest.fixture(scope="module")
def gap(footage_gap):
    return searched(footage_gap)


def centres(track) -> np.ndarray:
    return track.squares[:, :2] + track.squares[:, 2:3] / 2.0


def assert_near_the_faces(track, footage, tolerance: float = 0.5):
    """Every frame's square centre within ``tolerance`` face sides of the footage's face there."""
    for i, (cx, cy) in enumerate(centres(track)):
        faces = footage.faces[track.first + i]
        assert faces, f"frame {track.first + i} has no face"
        distance = min(np.hypot(cx - x, cy - y) / side for x, y, side in faces)
        assert distance < tolerance, f"frame {track.first + i}: square centre {distance:.2f} sides off"


def test_find_tracks_on_cuts_and_a_jumping_face(footage_cuts):
    """End to end with the defaults: one track in each face shot, none in the bikes shot, each
    inside its shot, the face jumping at the cut is a new track."""
    shots = shots_from_cuts(footage_cuts.cuts, footage_cuts.num_frames)
    tracks = find_tracks(footage_cuts.path, shots)
    assert [(t.shot, t.track) for t in tracks] == [(0, 0), (2, 1)]
    for track in tracks:
        shot = shots[track.shot]
        assert shot.first <= track.first < track.end <= shot.end
        assert track.squares.shape == (track.end - track.first, 3) and track.squares.dtype == np.int32
        assert track.detected.shape == (track.end - track.first,) and track.detected.any()
        assert track.end - track.first >= 0.9 * shot.num_frames
        assert_near_the_faces(track, footage_cuts)
    # the x3 face is larger than the x2 one, by about 3/2
    assert tracks[1].side_px / tracks[0].side_px == pytest.approx(1.5, rel=0.2)


@pytest.mark.parametrize("every", [1, 3])
def test_one_track_per_face_never_across_a_cut(every, cuts, gap, pair):
    config = TrackConfig(detect_every=every)
    for case, faces_per_shot in ((cuts, (1, 0, 1)), (gap, (1, 0, 1)), (pair, (2,))):
        tracks = case.tracks(config)
        assert [sum(t.shot == s.index for t in tracks) for s in case.shots] == list(faces_per_shot)
        assert [t.track for t in tracks] == list(range(len(tracks)))  # ids unique within the video
        for track in tracks:
            shot = case.shots[track.shot]
            assert shot.first <= track.first < track.end <= shot.end
            assert_near_the_faces(track, case.footage)


def test_the_same_face_after_a_no_face_shot_is_a_new_track(gap):
    first, second = gap.tracks()
    assert (first.shot, second.shot) == (0, 2) and first.track != second.track
    assert first.end <= 40 and second.first >= 80


def test_two_faces_side_by_side_are_two_tracks(pair):
    left, right = sorted(pair.tracks(), key=lambda t: t.squares[0, 0])
    assert left.first == right.first == 0 and left.end >= 55 and right.end >= 55
    assert (centres(left)[:, 0] < 264).all() and (centres(right)[:, 0] > 264).all()


def test_the_square_follows_the_moving_face_and_jitters_less(pan):
    """The pan moves the face ~1.3 px per frame: the smoothed square stays on the per-frame
    detections, and its frame-to-frame motion is steadier than theirs."""
    [track] = pan.tracks(EVERY_FRAME)
    boxes = track.boxes[track.detected].astype(float)
    raw = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    smooth = centres(track)[track.detected]
    side = float(np.median((boxes[:, 2] - boxes[:, 0] + boxes[:, 3] - boxes[:, 1]) / 2))
    error = np.hypot(*(smooth - raw).T) / side
    assert error.mean() < 0.05 and error.max() < 0.2
    # follows: the square moves left as far as the detections do (the pan's 120 px plus the
    # face's own motion in carphone)
    moved = centres(track)[0, 0] - centres(track)[-1, 0]
    assert moved > 120 and moved == pytest.approx(raw[0, 0] - raw[-1, 0], abs=0.1 * side)
    assert_near_the_faces(track, pan.footage)
    # jitter: change of the frame-to-frame step (the pan's own motion is a constant step)
    detected = np.flatnonzero(track.detected)
    consecutive = detected[1:-1][(np.diff(detected)[:-1] == 1) & (np.diff(detected)[1:] == 1)]
    assert len(consecutive) > 60

    def jitter(points: np.ndarray) -> float:
        index = np.searchsorted(detected, consecutive)
        return float(np.abs(points[index + 1] - 2 * points[index] + points[index - 1]).sum(axis=1).mean())

    assert jitter(smooth) < 0.3 * jitter(raw)
    # and the square's side is steadier than the detector's
    raw_sides = (boxes[:, 2] - boxes[:, 0] + boxes[:, 3] - boxes[:, 1]) / 2
    assert np.abs(np.diff(track.squares[track.detected, 2])).mean() < np.abs(np.diff(1.3 * raw_sides)).mean()


def test_every_third_frame_stays_on_every_frame_tracks(pan):
    [dense] = pan.tracks(EVERY_FRAME)
    [sparse] = pan.tracks(TrackConfig(detect_every=3))
    assert (sparse.first, sparse.end) == (dense.first, dense.end)
    assert sparse.detected.sum() <= dense.detected.sum() / 2
    error = np.hypot(*(centres(sparse) - centres(dense)).T) / np.median(dense.squares[:, 2])
    assert error.mean() < 0.05


def test_square_keeps_the_enlarged_proportion(pan):
    [track] = pan.tracks(EVERY_FRAME)
    boxes = track.boxes[track.detected]
    sides = (boxes[:, 2] - boxes[:, 0] + boxes[:, 3] - boxes[:, 1]) / 2
    assert np.median(track.squares[track.detected, 2]) / np.median(sides) == pytest.approx(1.3, rel=0.03)
    [wide] = pan.tracks(TrackConfig(detect_every=1, enlarge=2.0))
    assert np.median(wide.squares[:, 2]) / np.median(track.squares[:, 2]) == pytest.approx(2.0 / 1.3, rel=0.03)


def test_min_face_and_max_faces_are_honoured(cuts, pair):
    # cuts: ~95 px face in shot 0, ~150 px in shot 2
    assert [t.shot for t in cuts.tracks(TrackConfig(min_face=120))] == [2]
    assert cuts.tracks(TrackConfig(min_face=400)) == []
    [largest] = pair.tracks(TrackConfig(max_faces=1))
    both = pair.tracks()
    assert largest.side_px == max(t.side_px for t in both)


def test_short_and_flickering_tracks_are_dropped(gap, cuts):
    # the 45-frame face shots of cuts, against a minimum longer than them
    assert cuts.tracks(TrackConfig(min_track_frames=46)) == []
    # Big Buck Bunny: HOG sees a "face" on a few frames; the default min_detected drops it
    bunny = [t for t in gap.tracks(TrackConfig(min_detected=0.0)) if t.shot == 1]
    assert all(t.detected.mean() < 0.5 for t in bunny)
    assert [t.shot for t in gap.tracks()] == [0, 2]


@pytest.mark.parametrize("values, message", [
    ({"max_faces": 0}, "max_faces must be >= 1, got 0"),
    ({"min_face": 0}, "min_face must be >= 1 (pixels), got 0"),
    ({"detect_every": 0}, "detect_every must be >= 1, got 0"),
    ({"detect_every": 8, "max_gap": 3}, "max_gap must be >= detect_every - 1 = 7"),
    ({"smooth_window": 4}, "smooth_window must be an odd number >= 1, got 4"),
    ({"detector": "mtcnn"}, "'mtcnn' is not one of ['hog', 'cnn']"),
])
def test_bad_track_config_is_one_line(values, message):
    with pytest.raises(ConfigError) as err:
        from_dict(TrackConfig, values, where="faces")
    assert message in str(err.value) and str(err.value).startswith("faces")
    assert "\n" not in str(err.value)
    if "detector" not in values:
        with pytest.raises(ConfigError, match=message.split(",")[0].replace("(", r"\(").replace(")", r"\)")):
            TrackConfig(**values)


def test_crop_square_pads_with_edge_pixels():
    frame = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    assert np.array_equal(crop_square(frame, 1, 0, 3), frame[0:3, 1:4])
    out = crop_square(frame, -2, 2, 4)
    assert out.shape == (4, 4, 3)
    assert np.array_equal(out[:2, 2:], frame[2:4, 0:2])  # the inside part
    assert np.array_equal(out[:2, 0], frame[2:4, 0])  # left of the frame: the first column repeated
    assert np.array_equal(out[3, 2:], frame[3, 0:2])  # below the frame: the last row repeated
    far = crop_square(frame, 10, 10, 2)  # wholly outside: the nearest corner pixel
    assert far.shape == (2, 2, 3) and (far == frame[3, 4]).all()


def test_fit_square_moves_and_shrinks_into_the_frame():
    assert fit_square(-10, 5, 40, 100, 80) == (0, 5, 40)
    assert fit_square(80, 60, 40, 100, 80) == (60, 40, 40)
    assert fit_square(10, -20, 120, 200, 100) == (20, 0, 100)  # shrunk to 100 about x centre 70
