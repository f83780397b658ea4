"""Evaluation metrics for video face restoration and de-flickering.

Videos are numpy uint8 RGB arrays (T, H, W, 3). Every metric returns a :class:`MetricResult`:
a finite float, or None with a reason (never 0 or NaN for "could not compute").
``to_json`` turns a ``{name: MetricResult}`` dict into ``values`` + ``null_reasons`` + ``details``.

* fidelity: :func:`psnr`, :func:`ssim`, :func:`lpips` (+ :func:`load_lpips_or_reason`)
* identity: :func:`akd`, :func:`ids`, :func:`face_consistency`, :func:`identity_metrics` (all
  three with shared descriptors), :func:`detect_boxes` (dlib or ArcFace descriptors)
* temporal: :func:`flow_score`, :func:`warping_error`, :func:`flicker_index`, :func:`fvd`
  (+ :func:`frechet_distance`, :func:`flow_backend`, :func:`load_i3d_or_reason`)
* efficiency: :func:`time_clip`, :func:`device_description`
* suite: :func:`load_models`, :func:`video_metrics`, :func:`aggregate`, :class:`FVDAccumulator`

Identity metrics import dlib lazily through ``stcvq.faces.detection``; importing this package does not.
"""

from stcvq.evaluation.metrics.efficiency import device_description, time_clip
from stcvq.evaluation.metrics.fidelity import load_lpips_or_reason, lpips, psnr, ssim
from stcvq.evaluation.metrics.identity import (
    ArcFaceEmbedder,
    DlibEmbedder,
    akd,
    detect_boxes,
    embedder,
    face_consistency,
    identity_metrics,
    ids,
)
from stcvq.evaluation.metrics.result import MetricResult, to_json
from stcvq.evaluation.metrics.suite import FVDAccumulator, MetricModels, aggregate, load_models, video_metrics
from stcvq.evaluation.metrics.temporal import (
    DISFlow,
    I3DFeatures,
    RAFTFlow,
    feature_statistics,
    flicker_index,
    flow_backend,
    flow_score,
    frechet_distance,
    fvd,
    fvd_from_features,
    load_i3d_or_reason,
    warping_error,
)

__all__ = [
    "ArcFaceEmbedder", "DISFlow", "DlibEmbedder", "I3DFeatures", "MetricResult", "RAFTFlow", "akd",
    "detect_boxes", "device_description", "embedder", "face_consistency", "feature_statistics", "flicker_index",
    "flow_backend", "flow_score", "frechet_distance", "fvd", "identity_metrics", "ids", "load_i3d_or_reason",
    "load_lpips_or_reason", "FVDAccumulator", "MetricModels", "aggregate", "load_models", "video_metrics",
    "fvd_from_features", "lpips", "psnr", "ssim", "time_clip", "to_json", "warping_error",
]
