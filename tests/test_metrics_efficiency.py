"""stcvq.evaluation.metrics efficiency helpers: seconds per clip, frames per second, device."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stcvq.evaluation.metrics import device_description, time_clip


def test_time_clip_measures_a_known_delay():
    calls = []

    def enhance(clip):
        calls.append(len(clip))
        time.sleep(0.02)
        return clip

    clip = np.zeros((12, 8, 8, 3), np.uint8)
    timing = time_clip(enhance, clip, warmup=1, repeats=3)
    assert calls == [12] * 4  # one warm-up + three timed calls
    assert 0.02 <= timing["seconds_per_clip"] < 0.5
    assert timing["frames_per_second"] == pytest.approx(12 / timing["seconds_per_clip"])
    assert timing["seconds_per_24_frames"] == pytest.approx(2 * timing["seconds_per_clip"])
    assert timing["clip_frames"] == 12 and timing["device"].startswith("cpu:")


def test_time_clip_rejects_zero_repeats():
    with pytest.raises(ValueError):
        time_clip(lambda c: c, np.zeros((1, 2, 2, 3), np.uint8), repeats=0)


def test_device_description_names_the_cpu_and_threads():
    text = device_description("cpu")
    assert text.startswith("cpu:") and "threads" in text
