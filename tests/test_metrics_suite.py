"""stcvq.evaluation.metrics.suite: all per-video metrics in one call, means over a set, FVD accumulation."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from stcvq.evaluation.metrics import FVDAccumulator, MetricResult, aggregate, load_models, to_json, video_metrics
from stcvq.media.video import read_video


@pytest.fixture(scope="module")
def carphone(request) -> np.ndarray:
    return read_video(request.getfixturevalue("carphone_path"), stop=8, step=2)


def test_video_metrics_without_optional_weights(carphone):
    models = load_models()
    notes = models.notes()
    assert "not provided" in notes["lpips"] and "DIS" in notes["flow"] and "dlib" in notes["face_descriptor"]
    degraded = np.stack([cv2.GaussianBlur(f, (0, 0), 1.5) for f in carphone])
    results = video_metrics(degraded, carphone, models)
    assert set(results) == {
        "psnr", "ssim", "lpips", "flow_score", "warping_error", "flicker_index", "akd", "ids", "face_cons",
    }
    assert results["lpips"].value is None and "LPIPS" in results["lpips"].reason
    assert all(r.value is not None for name, r in results.items() if name != "lpips")
    assert results["warping_error"].details["flow_from"] == "flow_source"
    json.dumps(to_json(results), allow_nan=False)
    assert set(video_metrics(degraded, carphone, models, faces=False)) == {
        "psnr", "ssim", "lpips", "flow_score", "warping_error", "flicker_index",
    }


def test_aggregate_means_present_values_and_counts_missing():
    per_video = [
        {"psnr": MetricResult(30.0), "ids": MetricResult(0.9, details={"descriptor": "dlib"}),
         "lpips": MetricResult.missing("no weights")},
        {"psnr": MetricResult(20.0), "ids": MetricResult.missing("no face"),
         "lpips": MetricResult.missing("no weights")},
    ]
    summary = aggregate(per_video)
    assert summary["psnr"].value == 25.0 and summary["psnr"].details == {"videos": 2, "videos_missing": 0}
    assert summary["ids"].value == 0.9
    assert summary["ids"].details == {"videos": 1, "videos_missing": 1, "backend": "dlib"}
    assert summary["lpips"].value is None and "no weights" in summary["lpips"].reason
    assert aggregate([]) == {}


class _TinyI3D(torch.nn.Module):
    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3, 4)), x.std(dim=(1, 2, 3, 4)), x[:, 0].mean(dim=(1, 2, 3))], dim=1)


def test_fvd_accumulator(tmp_path, carphone):
    assert "I3D" in FVDAccumulator(load_models()).result().reason
    torch.jit.save(torch.jit.script(_TinyI3D()), str(tmp_path / "i3d.pt"))
    acc = FVDAccumulator(load_models(i3d_weights=tmp_path / "i3d.pt"))
    acc.add(carphone, carphone)
    assert "at least 2" in acc.result().reason
    rng = np.random.default_rng(0)
    for seed in range(3):
        noisy = np.clip(carphone + rng.normal(0, 20 + 10 * seed, carphone.shape), 0, 255).astype(np.uint8)
        acc.add(carphone[seed:], noisy)
    result = acc.result()
    assert result.value > 0 and result.details["real_videos"] == 4 and result.details["i3d_format"] == "torchscript"
