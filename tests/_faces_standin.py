"""TEMPORARY stand-in for stcvq.faces.shots / stcvq.faces.tracks (the faces branch builds the
real ones): installed into sys.modules only when they are missing. Removed after merging."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path

import numpy as np


def install() -> None:
    try:
        import stcvq.faces.shots  # noqa: F401
        import stcvq.faces.tracks  # noqa: F401
        return
    except ImportError:
        pass
    from stcvq.faces.detection import detect_faces
    from stcvq.media import video

    @dataclasses.dataclass(frozen=True)
    class Shot:
        index: int
        first: int
        end: int

    @dataclasses.dataclass(frozen=True)
    class ShotConfig:
        threshold: float = 30.0

    def detect_shots(path: Path, config: ShotConfig = ShotConfig(), num_frames: int | None = None) -> list[Shot]:
        cuts, previous, count = [0], None, 0
        for i, frame in enumerate(video.read_frames(path, gray=True)):
            if previous is not None and np.abs(frame.astype(float) - previous).mean() > config.threshold:
                cuts.append(i)
            previous, count = frame.astype(float), i + 1
        bounds = cuts + [count]
        return [Shot(k, a, b) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]

    @dataclasses.dataclass(frozen=True)
    class TrackConfig:
        min_face: int = 40
        max_faces: int = 8
        enlarge: float = 1.3

    @dataclasses.dataclass
    class FaceTrack:
        shot: int
        track: int
        first: int
        end: int
        squares: np.ndarray
        detected: np.ndarray

        @property
        def side_px(self) -> int:
            return int(np.median(self.squares[:, 2]))

    def find_tracks(path, shots, config=TrackConfig(), progress=False):
        tracks = []
        frames = list(video.read_frames(path))
        for shot in shots:
            open_tracks: list[list] = []  # [first, [boxes]]
            for i in range(shot.first, shot.end):
                boxes = [b for b in detect_faces(frames[i], 1) if b.width >= config.min_face][: config.max_faces]
                for b in boxes:
                    cx, cy = b.center
                    for t in open_tracks:
                        px, py, pside = t[1][-1]
                        if t[0] + len(t[1]) == i and abs(px - cx) < pside / 2 and abs(py - cy) < pside / 2:
                            t[1].append((cx, cy, b.width * config.enlarge))
                            break
                    else:
                        open_tracks.append([i, [(cx, cy, b.width * config.enlarge)]])
            for first, boxes in open_tracks:
                if len(boxes) < 3:
                    continue
                arr = np.array(boxes)
                side = np.full(len(arr), int(round(np.median(arr[:, 2]))))
                squares = np.stack([np.rint(arr[:, 0] - side / 2), np.rint(arr[:, 1] - side / 2), side], 1)
                tracks.append(FaceTrack(shot.index, len(tracks), first, first + len(arr), squares.astype(np.int32),
                                        np.ones(len(arr), bool)))
        return tracks

    def crop_square(frame, x0, y0, side):
        h, w = frame.shape[:2]
        pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else frame
        return padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]

    shots = types.ModuleType("stcvq.faces.shots")
    shots.Shot, shots.ShotConfig, shots.detect_shots = Shot, ShotConfig, detect_shots
    tracks = types.ModuleType("stcvq.faces.tracks")
    tracks.TrackConfig, tracks.FaceTrack, tracks.find_tracks, tracks.crop_square = (
        TrackConfig, FaceTrack, find_tracks, crop_square)
    sys.modules["stcvq.faces.shots"], sys.modules["stcvq.faces.tracks"] = shots, tracks
    import stcvq.faces

    stcvq.faces.shots, stcvq.faces.tracks = shots, tracks
