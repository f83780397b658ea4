"""Shots on real footage built from carphone, bikes and Big Buck Bunny (tests/_footage.py)."""

from __future__ import annotations

import numpy as np
import pytest

from stcvq.config import ConfigError, from_dict
from stcvq.faces.shots import Shot, ShotConfig, detect_shots, find_cuts, shots_from_cuts
from stcvq.media.video import read_frames


@pytest.mark.parametrize("name", ["footage_cuts", "footage_gap", "footage_pan", "footage_pair"])
def test_shots_found_are_the_cuts_made(name, request):
    footage = request.getfixturevalue(name)
    shots = detect_shots(footage.path)
    assert [(s.first, s.end) for s in shots] == footage.shots
    assert [s.index for s in shots] == list(range(len(shots)))


def test_shots_tile_the_frames_read(footage_cuts):
    shots = detect_shots(footage_cuts.path, num_frames=60)  # decoding stops at 60: one cut inside
    assert [(s.first, s.end) for s in shots] == [(0, 45), (45, 60)]


def test_a_higher_threshold_or_a_longer_minimum_merges_shots(footage_cuts):
    frames = list(read_frames(footage_cuts.path))
    assert find_cuts(frames, ShotConfig())[0] == [45, 80]
    # bikes' 35 frames are a shot shorter than 40: its closing cut is ignored
    assert find_cuts(frames, ShotConfig(min_shot_frames=40))[0] == [45]
    assert find_cuts(frames, ShotConfig(threshold=250.0))[0] == []


def test_shots_from_cuts():
    assert shots_from_cuts([30, 10, 10, 0, 99], 50) == [Shot(0, 0, 10), Shot(1, 10, 30), Shot(2, 30, 50)]
    assert shots_from_cuts([], 7) == [Shot(0, 0, 7)]
    assert shots_from_cuts([], 0) == []


def test_one_still_frame_is_one_shot():
    frames = [np.full((36, 48, 3), 90, np.uint8)] * 5
    assert shots_from_cuts(*find_cuts(frames)) == [Shot(0, 0, 5)]


@pytest.mark.parametrize("values, message", [
    ({"threshold": 0}, "threshold must be > 0, got 0.0"),
    ({"min_shot_frames": 0}, "min_shot_frames must be >= 1, got 0"),
    ({"detect_max_side": 4}, "detect_max_side must be >= 16, got 4"),
])
def test_bad_shot_config_is_one_line(values, message):
    with pytest.raises(ConfigError) as err:
        from_dict(ShotConfig, values, where="shots")
    assert str(err.value) == f"shots: {message}"
    assert "\n" not in str(err.value)
