"""Window seams of `stcvq enhance` with a trained model, on a still video.

    .venv/bin/python benchmarks/bench_enhance_seams.py [--model models/stage2-deflicker] [--frames 64]

A still video should come out still: every change between adjacent output frames is the
model's own frame-to-frame noise. Prints, for the default overlap and for overlap 0 (hard cuts,
the reference in the same run), the mean absolute step (0-255) between adjacent output frames
where a window's contribution begins or ends ("seam") and everywhere else, and their ratio
(1.0 = seams look like anywhere else).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stcvq.data.curate.ingest import embedded_source_dir  # noqa: E402
from stcvq.inference.enhance import StreamConfig, WholeFrame, restore_stream  # noqa: E402
from stcvq.media import video  # noqa: E402
from stcvq.nn.restorer import Stage2Model  # noqa: E402


def seam_steps(model: Stage2Model, still: list[np.ndarray], overlap: int) -> dict[str, float]:
    framing = WholeFrame(*still[0].shape[:2], model.size)
    stream = restore_stream(iter(still), model, framing.to_model, framing.from_model, StreamConfig(overlap=overlap))
    out = np.stack(list(stream))
    steps = np.abs(np.diff(out.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))  # steps[i]: frame i -> i + 1
    length = model.clip_length
    overlap = min(overlap, length - 1)
    starts = range(0, len(still) - overlap, length - overlap)
    # seam steps: where some window's contribution begins (step s-1 -> s) or ends (s+L-1 -> s+L)
    seams = sorted({i for s in starts for i in (s - 1, s + length - 1) if 0 <= i < len(steps)})
    inside = [i for i in range(len(steps)) if i not in seams]
    seam, rest = float(steps[seams].mean()), float(steps[inside].mean())
    return {"overlap": overlap, "seam_step": seam, "inside_step": rest, "seam_over_inside": seam / rest,
            "seam_steps": len(seams), "inside_steps": len(inside)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/stage2-deflicker")
    parser.add_argument("--frames", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = Stage2Model.from_pretrained(args.model).eval()
    carphone = embedded_source_dir() / "carphone_pristine.mp4"
    _, frames = video.read_sampled(carphone, 1, 1)
    still = [frames[0]] * args.frames
    blended = seam_steps(model, still, StreamConfig().overlap)
    hard = seam_steps(model, still, 0)
    print(json.dumps({"model": args.model, "frames": args.frames, "clip_length": model.clip_length,
                      "blended": blended, "hard_cuts": hard}))


if __name__ == "__main__":
    main()
