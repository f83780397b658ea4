"""Stage ``text``: drop videos with visible text (captions, logos, subtitles) found by OCR.

Only text DETECTION is needed (is there text, how sure), not recognition. Backends share one
small interface, :class:`TextDetector`: ``detect(rgb) -> [(polygon (4, 2), score), ...]``.

* ``rapidocr`` (default): PP-OCR detection through rapidocr + onnxruntime; the model ships
  inside the wheel, so it works offline. ``limit_side_len`` 512 (rapidocr's ``limit_type`` is
  ``min``: the shorter side is scaled to it): at rapidocr's default 736, text-free face frames can give
  false boxes.
* ``paddleocr`` (optional, ``pip install stcvq[paddle]``): PaddleOCR's TextDetection.
  Imported lazily; a clear error says how to install it. Its models download on first use.

Which frames: ``sample_frames`` frames spread evenly over the ORIGINAL frames of the row's face
track (``track_frames``; the whole video for a row without one), first and last included, at
the original resolution. Original, not the face crop: a caption in the
lower third is usually outside the face crop, and a video with burned-in text is unwanted
even if the crop misses it in some frames (it may move, and the synthesis stage may use a
looser crop). Spread over the clip, not the first frame only: captions and logos come and go,
but stay on screen for seconds, so a handful of evenly spread frames finds them at a fraction
of the cost of every frame (``benchmarks/bench_curation.py`` measures the stage's frames/s).

A box counts when its score is >= ``score_threshold`` and it covers at most
``max_box_fraction`` of the frame (PP-OCR once returned a whole-frame box at score 0.62 on
the text-free carphone video; real text lines are small).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Literal, Protocol, Sequence

import cv2
import numpy as np

from stcvq.config import check
from stcvq.data.curate.manifest import Row, drop, update
from stcvq.data.curate.runner import run_stage, worker_threads
from stcvq.media.video import read_frames, sample_indices

log = logging.getLogger(__name__)

STAGE = "text"
Backend = Literal["rapidocr", "paddleocr"]


@dataclasses.dataclass
class TextConfig:
    backend: Backend = "rapidocr"
    sample_frames: int = 5  # original frames searched, evenly spread (first and last included)
    score_threshold: float = 0.7  # carphone caption: 0.68-0.85; text-free frames: none above 0.62 after the size filter
    limit_side_len: int = 512
    max_box_fraction: float = 0.5  # larger "text" boxes are not text lines
    enabled: bool = True  # False: measure and record, drop nothing (data-filter ablation)

    def __post_init__(self) -> None:
        check(self.sample_frames >= 1, "text.sample_frames must be >= 1")
        check(0.0 < self.score_threshold <= 1.0, "text.score_threshold must be in (0, 1]")
        check(self.limit_side_len >= 32, "text.limit_side_len must be >= 32")
        check(0.0 < self.max_box_fraction <= 1.0, "text.max_box_fraction must be in (0, 1]")


class TextDetector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Text polygons ((4, 2) float, pixel coordinates of ``rgb``) with their scores."""


class RapidOCRDetector:
    """PP-OCR text detection via rapidocr (onnxruntime, bundled model)."""

    def __init__(self, limit_side_len: int = 512, threads: int = 1) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as err:  # pragma: no cover - a core dependency
            raise ImportError(f"text backend 'rapidocr' needs `pip install rapidocr onnxruntime`: {err}") from err
        self.engine = RapidOCR(params={
            "Det.limit_side_len": limit_side_len,
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        })

    def detect(self, rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)  # rapidocr expects OpenCV's BGR
        result = self.engine(bgr, use_det=True, use_cls=False, use_rec=False)
        if result.boxes is None or result.scores is None:
            return []
        return [(np.asarray(box, dtype=np.float64), float(score)) for box, score in zip(result.boxes, result.scores)]


class PaddleOCRDetector:
    """PaddleOCR (>= 3) TextDetection. Optional: ``pip install stcvq[paddle]``."""

    def __init__(self, limit_side_len: int = 512, model_name: str = "PP-OCRv5_mobile_det") -> None:
        try:
            from paddleocr import TextDetection
        except ImportError as err:
            raise ImportError(
                "text backend 'paddleocr' is not installed: `pip install 'stcvq[paddle]'` "
                "(it pins numpy and opencv-contrib versions that clash with the rest, so use a "
                f"separate environment), or set text.backend: rapidocr ({err})"
            ) from err
        self.model = TextDetection(model_name=model_name, limit_side_len=limit_side_len, limit_type="min")

    def detect(self, rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        out = []
        for result in self.model.predict(bgr, batch_size=1):
            for poly, score in zip(result["dt_polys"], result["dt_scores"]):
                out.append((np.asarray(poly, dtype=np.float64), float(score)))
        return out


_DETECTORS: dict[tuple, TextDetector] = {}


def get_detector(backend: Backend, limit_side_len: int) -> TextDetector:
    """A process-local detector per (backend, side length, pid); loaded on first use."""
    key = (backend, limit_side_len, os.getpid())
    if key not in _DETECTORS:
        if backend == "rapidocr":
            _DETECTORS[key] = RapidOCRDetector(limit_side_len, threads=worker_threads())
        elif backend == "paddleocr":
            _DETECTORS[key] = PaddleOCRDetector(limit_side_len)
        else:
            raise ValueError(f"unknown text backend {backend!r}; use 'rapidocr' or 'paddleocr'")
    return _DETECTORS[key]


def polygon_fraction(polygon: np.ndarray, width: int, height: int) -> float:
    """Area of a text polygon as a fraction of the frame."""
    return float(cv2.contourArea(np.asarray(polygon, dtype=np.float32))) / float(width * height)


def text_boxes(detector: TextDetector, rgb: np.ndarray, config: TextConfig) -> list[float]:
    """Scores of the detected boxes that are text-line sized (score filter applied by caller)."""
    h, w = rgb.shape[:2]
    return [score for poly, score in detector.detect(rgb) if polygon_fraction(poly, w, h) <= config.max_box_fraction]


def track_frames(row: Row, count: int) -> list[np.ndarray]:
    """``count`` raw frames spread evenly over the row's track range (the whole video without one)."""
    first, end = row["track_frames"] or (0, row["num_frames"])
    wanted = {first + i for i in sample_indices(end - first, count)}
    if not wanted:
        return []
    frames = read_frames(Path(row["raw_path"]), start=first, stop=max(wanted) + 1)
    return [frame for index, frame in enumerate(frames, start=first) if index in wanted]


def measure_text(row: Row, config: TextConfig) -> Row:
    detector = get_detector(config.backend, config.limit_side_len)
    frames = track_frames(row, config.sample_frames)
    scores = [s for f in frames for s in text_boxes(detector, f, config)]
    above = [s for s in scores if s >= config.score_threshold]
    row = update(row, {"text_frames": len(frames), "text_score": max(scores, default=0.0), "text_boxes": len(above)})
    if above and config.enabled:
        return drop(row, "text", STAGE)
    return row


def run_text(rows: Sequence[Row], config: TextConfig, workers: int = 1) -> list[Row]:
    return run_stage(STAGE, measure_text, rows, config, workers)
