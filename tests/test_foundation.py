"""The foundation every stage relies on: typed configs, atomic writes, video I/O."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Literal

import numpy as np
import pytest

from stcvq import io
from stcvq.config import ConfigError, check, from_dict, to_dict
from stcvq.media import video


@dataclasses.dataclass(frozen=True)
class _Inner:
    depth: int = 2


@dataclasses.dataclass(frozen=True)
class _Config:
    rate: float = 1.0
    mode: Literal["a", "b"] = "a"
    widths: tuple[int, ...] = (1, 2)
    inner: _Inner = _Inner()
    path: str | None = None

    def __post_init__(self):
        check(self.rate > 0, f"rate must be positive, got {self.rate}")


def test_config_from_dict_types_and_defaults():
    cfg = from_dict(_Config, {"rate": 2, "widths": [3, 4], "inner": {"depth": 5}})
    assert cfg.rate == 2.0 and isinstance(cfg.rate, float)
    assert cfg.widths == (3, 4) and cfg.inner == _Inner(5) and cfg.mode == "a"
    assert to_dict(cfg)["widths"] == [3, 4]


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"rat": 1.0}, "unknown key"),
        ({"rate": "fast"}, "expected a number"),
        ({"mode": "c"}, "not one of"),
        ({"inner": {"depth": 1.5}}, "expected an integer"),
        ({"rate": -1.0}, "rate must be positive"),
    ],
)
def test_config_rejects_bad_values(bad, fragment):
    with pytest.raises(ConfigError, match=fragment):
        from_dict(_Config, bad)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    io.write_json(target, {"b": 1, "a": [1, 2]})
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("killed")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert before.decode().index('"a"') < before.decode().index('"b"')  # sorted keys


def test_write_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        io.write_json(tmp_path / "m.json", {"psnr": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_probe_and_read_real_video(carphone_path):
    info = video.probe(carphone_path)
    assert (info.width, info.height, info.num_frames) == (176, 144, 120)
    assert info.fps_fraction == "30000/1001" and not info.has_audio
    frames = video.read_video(carphone_path, start=10, stop=20, step=3)
    assert frames.shape == (4, 144, 176, 3) and frames.dtype == np.uint8


def test_write_video_lossless_and_deterministic(tmp_path, moving_square):
    out = video.write_video(tmp_path / "a.mkv", moving_square, 25, codec="ffv1", pix_fmt="rgb24")
    np.testing.assert_array_equal(video.read_video(out), moving_square)
    digests = set()
    for name in ("x.mp4", "y.mp4"):
        path = video.write_video(tmp_path / name, moving_square, "30000/1001", crf=23)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1, "same frames, same settings must give the same bytes"


def test_write_video_copies_audio(tmp_path, bunny_path):
    frames = video.read_frames(bunny_path, stop=30)
    out = video.write_video(tmp_path / "a.mp4", frames, 25, audio_from=bunny_path)
    info = video.probe(out, count_frames=True)
    assert info.has_audio and info.num_frames == 30


@pytest.mark.parametrize("content", [b"", b"not a video at all", None])
def test_bad_files_raise_video_error_naming_the_file(tmp_path, carphone_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(carphone_path.read_bytes()[:4000] if content is None else content)
    with pytest.raises(video.VideoError, match="bad.mp4"):
        video.read_video(bad)


def test_write_video_rejects_mismatched_frames(tmp_path, moving_square):
    frames = list(moving_square) + [np.zeros((10, 10, 3), np.uint8)]
    with pytest.raises(video.VideoError, match="expected 48x32"):
        video.write_video(tmp_path / "bad.mp4", frames, 25)
    assert not (tmp_path / "bad.mp4").exists()


def test_atomic_write_has_ordinary_permissions(tmp_path):
    target = tmp_path / "m.json"
    io.write_json(target, {"a": 1})
    expected = 0o666 & ~_current_umask()
    assert target.stat().st_mode & 0o777 == expected


def _current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
