"""Identity and pose metrics on faces: AKD, IDS, Face-Cons.

* AKD: mean Euclidean distance (pixels) between the dlib 68 landmarks of the output frame and
  of the ground-truth frame, averaged over the 68 points and over frames.
* IDS: cosine similarity of the face descriptors of output and ground truth, on EVERY frame
  with a face, averaged (the reference code looked at one frame; docs/design.md section 3.8).
* Face-Cons: cosine similarity of the first face frame's descriptor to every later face frame
  of the same video, averaged (identity drift within one video).

Faces are found with the dlib HOG detector (upsample 1, ``stcvq.faces.detection``) on the GROUND TRUTH
and the same box is used in the output frame: a restoration that blurs the face so that the
detector misses it must still be scored, not dropped. Frames without a ground-truth face are
skipped and counted in ``details``; with none at all the metric is None with a reason.

Descriptors: dlib's 128-d ResNet by default; ArcFace when an ONNX (onnxruntime) or
TorchScript file is given (:class:`ArcFaceEmbedder`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np
import torch

from stcvq.evaluation.metrics.result import MetricResult, check_pair, check_video
from stcvq.evaluation.metrics.weights import WeightsError, load_torchscript
from stcvq.faces import detection
from stcvq.faces.detection import FaceBox

log = logging.getLogger(__name__)


def auto_upsample(height: int, width: int) -> int:
    """HOG finds faces from about 80 px: upsample twice below 96 px frames (a 64x64 face crop:
    0/24 carphone frames found with 1, 24/24 with 2), once otherwise (176x144 carphone)."""
    return 2 if min(height, width) < 96 else 1


def detect_boxes(video: np.ndarray, upsample: int | None = None) -> list[FaceBox | None]:
    """The largest face of each frame (dlib HOG), None where there is none.
    ``upsample`` None picks :func:`auto_upsample` from the frame size."""
    check_video(video)
    if upsample is None:
        upsample = auto_upsample(*video.shape[1:3])
    return [detection.largest_face(frame, upsample=upsample) for frame in video]


def _boxes_for(video: np.ndarray, boxes: Sequence[FaceBox | None] | None) -> list[FaceBox | None]:
    if boxes is None:
        return detect_boxes(video)
    if len(boxes) != len(video):
        raise ValueError(f"got {len(boxes)} boxes for {len(video)} frames")
    return list(boxes)


def _face_details(boxes: Sequence[FaceBox | None]) -> dict[str, int]:
    with_face = sum(b is not None for b in boxes)
    return {"frames": len(boxes), "frames_with_face": with_face, "frames_without_face": len(boxes) - with_face}


# ---------------------------------------------------------------------------------------------
# Embedders


class Embedder(Protocol):
    name: str

    def __call__(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        """A 1-D identity descriptor of the face in ``box``."""
        ...


class DlibEmbedder:
    """dlib's 128-d face descriptor (face_recognition_models), no jitter (deterministic)."""

    name = "dlib"

    def __call__(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        return detection.face_descriptor(rgb, box)


# insightface's 5-point template for 112x112 ArcFace crops (image-left eye, image-right eye,
# nose tip, mouth left, mouth right).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The ArcFace 5 points from the 68 iBUG landmarks: eye centres (36-41, 42-47), nose tip 30,
    mouth corners 48 and 54."""
    return np.stack(
        [landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[30], landmarks[48], landmarks[54]]
    ).astype(np.float32)


def align_arcface(rgb: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Similarity-transform the face onto the ArcFace template: (size, size, 3) uint8."""
    matrix, _ = cv2.estimateAffinePartial2D(five_points(landmarks), ARCFACE_TEMPLATE * (size / 112.0), method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("cannot estimate the ArcFace alignment from these landmarks")
    return cv2.warpAffine(rgb, matrix, (size, size), borderValue=0)


class ArcFaceEmbedder:
    """ArcFace from insightface-style weights.

    Expected: an ONNX model (e.g. insightface ``w600k_r50.onnx`` / ``glintr100.onnx``) run with
    onnxruntime, or a TorchScript archive of an arcface_torch ``iresnet``; either takes float
    (1, 3, 112, 112) RGB scaled as (x - 127.5) / 127.5 and returns (1, D). Faces are aligned
    with the 5 points derived from the 68 dlib landmarks. Descriptors are L2-normalised.
    """

    name = "arcface"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"{path}: no such ArcFace weights file")
        self.path = str(path)
        self.device = torch.device(device)
        if path.suffix == ".onnx":
            import onnxruntime as ort

            try:
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1  # deterministic and polite on shared cores
                self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as err:
                raise WeightsError(f"{path}: onnxruntime cannot load it: {err}") from None
            self._input = self._session.get_inputs()[0].name
            self._torch = None
        else:
            self._session = None
            self._torch = load_torchscript(path, self.device)

    def __call__(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        crop = align_arcface(rgb, detection.landmarks68(rgb, box))
        x = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        if self._session is not None:
            out = self._session.run(None, {self._input: x})[0]
        else:
            with torch.inference_mode():
                out = self._torch(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
        vector = np.asarray(out, np.float64).reshape(-1)
        return vector / max(np.linalg.norm(vector), 1e-12)


def embedder(arcface_weights: str | Path | None = None) -> tuple[Embedder, str]:
    """ArcFace when its file loads, dlib otherwise; and a note saying which and why."""
    if arcface_weights:
        try:
            return ArcFaceEmbedder(arcface_weights), f"ArcFace from {arcface_weights}"
        except WeightsError as err:
            log.warning("ArcFace unavailable, using dlib descriptors: %s", err)
            return DlibEmbedder(), f"dlib descriptor (ArcFace unavailable: {err})"
    return DlibEmbedder(), "dlib descriptor (no ArcFace weights given)"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


# ---------------------------------------------------------------------------------------------
# Metrics


def akd(output: np.ndarray, reference: np.ndarray, boxes: Sequence[FaceBox | None] | None = None) -> MetricResult:
    """Average keypoint distance (pixels, lower is better). ``boxes``: ground-truth faces per
    frame (detected when None)."""
    check_pair(output, reference)
    boxes = _boxes_for(reference, boxes)
    distances = [
        float(np.linalg.norm(detection.landmarks68(o, box) - detection.landmarks68(r, box), axis=1).mean())
        for o, r, box in zip(output, reference, boxes)
        if box is not None
    ]
    details = _face_details(boxes)
    if not distances:
        return MetricResult.missing("no face detected in any ground-truth frame", **details)
    return MetricResult(float(np.mean(distances)), details=details)


def descriptors(video: np.ndarray, boxes: Sequence[FaceBox | None], embed: Embedder) -> dict[int, np.ndarray]:
    """``{frame index: descriptor}`` for every frame with a box."""
    return {t: embed(frame, box) for t, (frame, box) in enumerate(zip(video, boxes)) if box is not None}


def _ids_from(out_desc: dict[int, np.ndarray], ref_desc: dict[int, np.ndarray], details: dict) -> MetricResult:
    frames = sorted(out_desc)
    if not frames:
        return MetricResult.missing("no face detected in any ground-truth frame", **details)
    sims = [cosine(out_desc[t], ref_desc[t]) for t in frames]
    # dlib descriptors are trained for Euclidean distance (same person < 0.6) and are not
    # centred, so their cosine similarities crowd near 1 (README, "Scoring a model on a paired
    # test set"); report both.
    euclid = [float(np.linalg.norm(out_desc[t] - ref_desc[t])) for t in frames]
    return MetricResult(
        float(np.mean(sims)), details={**details, "min": float(np.min(sims)), "mean_euclidean": float(np.mean(euclid))}
    )


def _face_cons_from(desc: dict[int, np.ndarray], details: dict) -> MetricResult:
    frames = sorted(desc)
    if len(frames) < 2:
        return MetricResult.missing(f"Face-Cons needs faces in at least 2 frames, found {len(frames)}", **details)
    anchor = desc[frames[0]]
    sims = [cosine(anchor, desc[t]) for t in frames[1:]]
    details = {**details, "anchor_frame": frames[0], "min": float(np.min(sims))}
    return MetricResult(float(np.mean(sims)), details=details)


def ids(
    output: np.ndarray,
    reference: np.ndarray,
    embed: Embedder | None = None,
    boxes: Sequence[FaceBox | None] | None = None,
) -> MetricResult:
    """Identity similarity: mean over every face frame of cosine(desc(output_t), desc(gt_t))."""
    check_pair(output, reference)
    embed = embed or DlibEmbedder()
    boxes = _boxes_for(reference, boxes)
    details = {**_face_details(boxes), "descriptor": embed.name}
    return _ids_from(descriptors(output, boxes, embed), descriptors(reference, boxes, embed), details)


def face_consistency(
    video: np.ndarray, embed: Embedder | None = None, boxes: Sequence[FaceBox | None] | None = None
) -> MetricResult:
    """Face-Cons: mean cosine similarity of the first face frame's descriptor to every later
    face frame. ``boxes`` default to detections in ``video`` itself; pass the ground truth's
    boxes to score an output whose faces the detector may miss."""
    check_video(video)
    embed = embed or DlibEmbedder()
    boxes = _boxes_for(video, boxes)
    details = {**_face_details(boxes), "descriptor": embed.name}
    return _face_cons_from(descriptors(video, boxes, embed), details)


def identity_metrics(
    output: np.ndarray,
    reference: np.ndarray,
    embed: Embedder | None = None,
    boxes: Sequence[FaceBox | None] | None = None,
) -> dict[str, MetricResult]:
    """``{"akd", "ids", "face_cons"}`` for one output/ground-truth pair, each output descriptor
    computed once (IDS and Face-Cons share them; descriptors are most of the cost).
    Face-Cons is the output's, on the ground truth's face boxes."""
    check_pair(output, reference)
    embed = embed or DlibEmbedder()
    boxes = _boxes_for(reference, boxes)
    details = {**_face_details(boxes), "descriptor": embed.name}
    out_desc = descriptors(output, boxes, embed)
    return {
        "akd": akd(output, reference, boxes),
        "ids": _ids_from(out_desc, descriptors(reference, boxes, embed), details),
        "face_cons": _face_cons_from(out_desc, details),
    }
