"""Real test footage with shots and moving or several faces, built from the videos that ship.

carphone (176x144, one face, 120 frames), bikes.mp4 (640x272, no face; its own cuts at frames
30, 76, 137, 187, 242) and bigbuckbunny.mp4 (1280x720, a cartoon: no human face) are cut,
scaled (integer resampling, :mod:`stcvq.media.resample`), panned and put side by side, then
written with :func:`stcvq.media.video.write_video` (x264 without CPU-specific code: the same
bytes on every machine). Each builder writes one video into a folder and returns it with its
ground truth (:class:`Footage`); the session fixtures at the end (registered in conftest.py)
build each once per test run.

The face positions are approximate: carphone's face moves around (76, 65) by about 12 px in its
own 176x144 frame, its dlib box side is about 53 px. Tests compare with a tolerance in face sides.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest

from stcvq.data.curate.ingest import embedded_source_dir
from stcvq.io import atomic_path
from stcvq.media import resample
from stcvq.media.video import ffmpeg_exe, read_frames, write_video

FPS = "30000/1001"
CARPHONE_FACE = (76.0, 65.0, 53.0)  # approximate face centre x, y and box side in carphone's own pixels


@dataclasses.dataclass(frozen=True)
class Footage:
    """A built video and what is in it."""

    path: Path
    num_frames: int
    width: int
    height: int
    cuts: tuple[int, ...]  # first frame of every shot after the first
    faces_per_shot: tuple[int, ...]
    faces: tuple[tuple[tuple[float, float, float], ...], ...]  # per frame: (centre x, centre y, side) of each face
    has_audio: bool = False

    @property
    def shots(self) -> list[tuple[int, int]]:
        """[first, end) of every shot."""
        bounds = [0, *self.cuts, self.num_frames]
        return list(zip(bounds[:-1], bounds[1:]))


def _source(name: str) -> Path:
    return embedded_source_dir() / name


def _frames(name: str, start: int, stop: int) -> list[np.ndarray]:
    return list(read_frames(_source(name), start=start, stop=stop))


def _scaled(frame: np.ndarray, factor: float) -> np.ndarray:
    h, w = frame.shape[:2]
    return resample.resize(frame, int(round(w * factor)), int(round(h * factor)))


def _fit(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """``frame`` centre-cropped to the aspect of ``width`` x ``height``, then resized to it."""
    h, w = frame.shape[:2]
    if w * height > h * width:
        keep = int(round(h * width / height))
        frame = frame[:, (w - keep) // 2:(w - keep) // 2 + keep]
    else:
        keep = int(round(w * height / width))
        frame = frame[(h - keep) // 2:(h - keep) // 2 + keep]
    return resample.resize(frame, width, height)


def _carphone_face(scale: float, dx: float = 0.0, dy: float = 0.0) -> tuple[float, float, float]:
    x, y, side = CARPHONE_FACE
    return x * scale + dx, y * scale + dy, side * scale


def _write(path: Path, frames: list[np.ndarray], audio: bool = False) -> Path:
    write_video(path, frames, FPS, crf=18, portable=True)
    if audio:
        _add_tone(path, len(frames))
    return path


def _add_tone(path: Path, num_frames: int) -> None:
    """Mux a 440 Hz sine tone as long as the video into ``path`` (AAC, bit-exact)."""
    seconds = num_frames * 1001 / 30000
    with atomic_path(path) as tmp:
        subprocess.run(
            [ffmpeg_exe(), "-y", "-loglevel", "error", "-nostdin", "-i", str(path),
             "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds:.4f}",
             "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-b:a", "64k",
             "-fflags", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1", "-f", "mp4", str(tmp)],
            check=True,
        )


def build_cuts(folder: Path) -> Footage:
    """carphone x2 (45 frames) | bikes (35 frames, no face) | carphone x3 panned so the face jumps
    up and left (45 frames), 352x288, with a sine-tone audio track; cuts at 45 and 80."""
    width, height = 352, 288
    near = [_scaled(f, 2.0) for f in _frames("carphone_pristine.mp4", 0, 45)]
    bikes = [_fit(f, width, height) for f in _frames("bikes.mp4", 80, 115)]  # inside bikes' shot 76-137
    x0, y0 = 120, 100  # window of carphone x3 (528x432)
    zoomed = [_scaled(f, 3.0)[y0:y0 + height, x0:x0 + width] for f in _frames("carphone_pristine.mp4", 45, 90)]
    frames = near + bikes + zoomed
    faces = [(_carphone_face(2.0),)] * 45 + [()] * 35 + [(_carphone_face(3.0, -x0, -y0),)] * 45
    path = _write(Path(folder) / "cuts.mp4", frames, audio=True)
    return Footage(path, len(frames), width, height, (45, 80), (1, 0, 1), tuple(faces), has_audio=True)


def pan_window(frame_index: int, num_frames: int = 90) -> tuple[int, int]:
    """(x0, y0) of the pan's 352x288 window over carphone x3 at ``frame_index``."""
    return int(round(120 * frame_index / (num_frames - 1))), 72


def build_pan(folder: Path, num_frames: int = 90) -> Footage:
    """A 352x288 window panning 120 px to the right over carphone x3 (528x432) in ``num_frames``
    frames: the face moves left by about 1.3 px per frame. One shot."""
    width, height = 352, 288
    frames, faces = [], []
    for i, frame in enumerate(_frames("carphone_pristine.mp4", 0, num_frames)):
        x0, y0 = pan_window(i, num_frames)
        frames.append(_scaled(frame, 3.0)[y0:y0 + height, x0:x0 + width])
        faces.append((_carphone_face(3.0, -x0, -y0),))
    path = _write(Path(folder) / "pan.mp4", frames)
    return Footage(path, len(frames), width, height, (), (1,), tuple(faces))


def build_pair(folder: Path, num_frames: int = 60, shift: int = 30) -> Footage:
    """Two faces in every frame: carphone x1.5 (264x216) beside the horizontal mirror of carphone
    ``shift`` frames later, 528x216. One shot, two tracks."""
    frames, faces = [], []
    carphone = [_scaled(f, 1.5) for f in _frames("carphone_pristine.mp4", 0, 120)]
    for i in range(num_frames):
        frames.append(np.concatenate([carphone[i], carphone[(i + shift) % 120][:, ::-1]], axis=1))
        x, y, side = _carphone_face(1.5)
        faces.append(((x, y, side), (2 * 264 - x, y, side)))
    path = _write(Path(folder) / "pair.mp4", frames)
    return Footage(path, len(frames), 528, 216, (), (2,), tuple(faces))


def build_gap(folder: Path) -> Footage:
    """carphone x2 (40 frames) | Big Buck Bunny (40 frames, a cartoon, no human face) | carphone x2
    again, same framing (40 frames), 352x288: the same face on both sides of a no-face shot."""
    width, height = 352, 288
    first = [_scaled(f, 2.0) for f in _frames("carphone_pristine.mp4", 0, 40)]
    bunny = [_fit(f, width, height) for f in _frames("bigbuckbunny.mp4", 0, 40)]
    second = [_scaled(f, 2.0) for f in _frames("carphone_pristine.mp4", 40, 80)]
    frames = first + bunny + second
    faces = [(_carphone_face(2.0),)] * 40 + [()] * 40 + [(_carphone_face(2.0),)] * 40
    path = _write(Path(folder) / "gap.mp4", frames)
    return Footage(path, len(frames), width, height, (40, 80), (1, 0, 1), tuple(faces))


def build_wide(folder: Path, num_frames: int = 60) -> Footage:
    """640x360 for the tracking benchmark: carphone x1.5 and its mirror 30 frames later on a
    resized bikes background, one shot (bikes frames from inside its shot 76-137)."""
    width, height = 640, 360
    carphone = [_scaled(f, 1.5) for f in _frames("carphone_pristine.mp4", 0, 120)]
    backgrounds = [_fit(f, width, height) for f in _frames("bikes.mp4", 76, 76 + num_frames)]
    frames, faces = [], []
    for i, background in enumerate(backgrounds):
        frame = background.copy()
        frame[72:288, 40:304] = carphone[i]
        frame[72:288, 336:600] = carphone[(i + 30) % 120][:, ::-1]
        frames.append(frame)
        x, y, side = _carphone_face(1.5)
        faces.append(((x + 40, y + 72, side), (600 - x, y + 72, side)))
    path = _write(Path(folder) / "wide.mp4", frames)
    return Footage(path, len(frames), width, height, (), (2,), tuple(faces))


@pytest.fixture(scope="session")
def footage_cuts(tmp_path_factory) -> Footage:
    return build_cuts(tmp_path_factory.mktemp("footage"))


@pytest.fixture(scope="session")
def footage_pan(tmp_path_factory) -> Footage:
    return build_pan(tmp_path_factory.mktemp("footage"))


@pytest.fixture(scope="session")
def footage_pair(tmp_path_factory) -> Footage:
    return build_pair(tmp_path_factory.mktemp("footage"))


@pytest.fixture(scope="session")
def footage_gap(tmp_path_factory) -> Footage:
    return build_gap(tmp_path_factory.mktemp("footage"))
