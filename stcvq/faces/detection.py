"""Faces with dlib: detection (HOG or CNN), 68-point landmarks and 128-d face descriptors.

The dlib models come from the ``face_recognition_models`` package. Its ``__init__`` imports
``pkg_resources``; we only need the files, so we locate its ``models/`` folder with
``importlib.util.find_spec`` and never import it.

Models are loaded lazily, once per process (a process pool worker loads its own copy on
first use; a forked child notices the new pid and reloads instead of sharing dlib state).

Boxes are :class:`FaceBox` in pixel coordinates of the image they were found in,
``x1``/``y1`` exclusive (numpy slicing ``rgb[y0:y1, x0:x1]``). dlib may return a box that
reaches past the image border; we keep it as found (landmarks and descriptors want the
unclipped box) and :meth:`FaceBox.clip` gives the part inside the image.

The HOG detector misses the faces of 176x144 frames (carphone's) without upsampling, so
``upsample=1`` is the default.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import Literal

import numpy as np

from stcvq.io import package_dir

log = logging.getLogger(__name__)

Detector = Literal["hog", "cnn"]

MODEL_FILES = {
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "cnn": "mmod_human_face_detector.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
}


class FaceModelError(RuntimeError):
    """A dlib model file is missing or cannot be loaded."""


@dataclasses.dataclass(frozen=True)
class FaceBox:
    """A detected face: pixel box (x1, y1 exclusive) and the detector's score."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0

    def clip(self, width: int, height: int) -> "FaceBox":
        """The part of the box inside a ``width`` x ``height`` image."""
        return FaceBox(
            x0=min(max(self.x0, 0), width),
            y0=min(max(self.y0, 0), height),
            x1=min(max(self.x1, 0), width),
            y1=min(max(self.y1, 0), height),
            score=self.score,
        )

    def scaled(self, factor: float) -> "FaceBox":
        """The box in an image resized by ``factor`` (e.g. back from a downscaled frame)."""
        return FaceBox(
            x0=int(round(self.x0 * factor)),
            y0=int(round(self.y0 * factor)),
            x1=int(round(self.x1 * factor)),
            y1=int(round(self.y1 * factor)),
            score=self.score,
        )

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x1, self.y1


def models_dir() -> Path:
    """The ``models/`` folder of the installed ``face_recognition_models`` package."""
    package = package_dir("face_recognition_models")
    if package is None:
        raise FaceModelError(
            "face_recognition_models is not installed: `pip install face_recognition_models` "
            "(it ships the dlib landmark, CNN detector and face descriptor models)"
        )
    folder = package / "models"
    if not folder.is_dir():
        raise FaceModelError(f"{folder}: face_recognition_models has no models/ folder")
    return folder


def model_path(name: str) -> Path:
    path = models_dir() / MODEL_FILES[name]
    if not path.is_file():
        raise FaceModelError(f"{path}: dlib model file missing ({name})")
    return path


class FaceModels:
    """Process-local holder of the dlib models; each one loads on first use."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._cache: dict[str, object] = {}

    def _get(self, name: str, build):
        with self._lock:
            if name not in self._cache:
                log.debug("loading dlib model %s", name)
                self._cache[name] = build()
            return self._cache[name]

    @property
    def hog(self):
        import dlib

        return self._get("hog", dlib.get_frontal_face_detector)

    @property
    def cnn(self):
        import dlib

        return self._get("cnn", lambda: dlib.cnn_face_detection_model_v1(str(model_path("cnn"))))

    @property
    def landmarks68(self):
        import dlib

        return self._get("landmarks68", lambda: dlib.shape_predictor(str(model_path("landmarks68"))))

    @property
    def descriptor(self):
        import dlib

        return self._get("descriptor", lambda: dlib.face_recognition_model_v1(str(model_path("descriptor"))))


_MODELS: FaceModels | None = None


def get_models() -> FaceModels:
    """The models of this process (a new holder after a fork)."""
    global _MODELS
    if _MODELS is None or _MODELS.pid != os.getpid():
        _MODELS = FaceModels()
    return _MODELS


def _as_image(rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(rgb)
    if image.dtype != np.uint8:
        raise ValueError(f"faces: expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"faces: expected an (H, W, 3) RGB or (H, W) gray image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _from_rect(rect, score: float) -> FaceBox:
    # dlib rectangles are inclusive on the right/bottom edge
    return FaceBox(int(rect.left()), int(rect.top()), int(rect.right()) + 1, int(rect.bottom()) + 1, float(score))


def _to_rect(box: FaceBox):
    import dlib

    return dlib.rectangle(int(box.x0), int(box.y0), int(box.x1) - 1, int(box.y1) - 1)


def detect_faces(rgb: np.ndarray, upsample: int = 1, detector: Detector = "hog") -> list[FaceBox]:
    """Faces in one image, best score first.

    ``upsample`` doubles the image that many times before detection (finds smaller faces;
    each step costs about 4x). HOG scores are SVM margins (> 0 means detected); CNN scores are
    the mmod confidence.
    """
    image = _as_image(rgb)
    if upsample < 0:
        raise ValueError(f"faces: upsample must be >= 0, got {upsample}")
    models = get_models()
    if detector == "hog":
        rects, scores, _ = models.hog.run(image, upsample, 0.0)
        boxes = [_from_rect(r, s) for r, s in zip(rects, scores)]
    elif detector == "cnn":
        if image.ndim == 2:
            image = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))
        boxes = [_from_rect(d.rect, d.confidence) for d in models.cnn(image, upsample)]
    else:
        raise ValueError(f"faces: unknown detector {detector!r}; use 'hog' or 'cnn'")
    # ties broken by position so the order never depends on dlib internals
    return sorted(boxes, key=lambda b: (-b.score, b.x0, b.y0, b.x1, b.y1))


def largest_face(rgb: np.ndarray, upsample: int = 1, detector: Detector = "hog") -> FaceBox | None:
    """The detected face with the largest area (None when there is none)."""
    boxes = detect_faces(rgb, upsample=upsample, detector=detector)
    if not boxes:
        return None
    return max(boxes, key=lambda b: (b.area, b.score))


def landmarks68(rgb: np.ndarray, box: FaceBox) -> np.ndarray:
    """The 68 iBUG landmarks of the face in ``box`` as a (68, 2) float array of (x, y).

    Index conventions used elsewhere: 36/45 are the outer eye corners, 30 the nose tip.
    """
    image = _as_image(rgb)
    shape = get_models().landmarks68(image, _to_rect(box))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def face_descriptor(rgb: np.ndarray, box: FaceBox, num_jitters: int = 0) -> np.ndarray:
    """The 128-d dlib ResNet face descriptor of the face in ``box`` (aligned with 68 landmarks).

    Two descriptors of the same person are usually closer than 0.6 (Euclidean).
    ``num_jitters=0`` is deterministic; jittering uses dlib's own RNG.
    """
    image = _as_image(rgb)
    if image.ndim == 2:
        image = np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))
    models = get_models()
    shape = models.landmarks68(image, _to_rect(box))
    vector = models.descriptor.compute_face_descriptor(image, shape, num_jitters)
    return np.asarray(vector, dtype=np.float64)
