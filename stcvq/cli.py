"""`stcvq` command line: enhance videos, and measure what enhancing costs.

    stcvq enhance INPUT -o OUTPUT --task bfvr|deflicker|deflicker-pixel [--model DIR]
                  [--tracks|--face-crop|--whole-frame] [--min-face PX] [--max-faces N] [--fidelity W] [--compare FILE]
    stcvq import-reference CKPT --task bfvr|deflicker|deflicker-pixel [-o DIR]   (or --download TASK, --stage1)
    stcvq evaluate --model DIR --lq LQ_DIR --gt GT_DIR -o FILE [--frames N] [--size S]
    stcvq bench enhance --profile paper|embedded|tiny|reference --frames N --size S [--attention ...] [--dtype ...]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import sys
from pathlib import Path

from stcvq.tasks import TASKS

# Containers ffmpeg muxes H.264 into (with the input's audio copied); a folder input's other
# videos (.webm, .flv, ...) are written as NAME.mp4.
OUTPUT_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")
log = logging.getLogger("stcvq")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line; the usage itself is one --help away."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_range(low: int, high: int | None = None):
    """argparse type: an integer in [low, high]; argparse names the option in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"must be {f'in {low}..{high}' if high is not None else f'>= {low}'}, got {value}")
        return value

    return parse


def _unit_float(text: str) -> float:
    """argparse type: a number in 0..1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in 0..1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in 0..1, got {text}")
    return value


def resolve_device(name: str) -> str:
    import torch

    if name != "auto":
        if name == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        if name == "mps" and not torch.backends.mps.is_available():
            raise SystemExit("--device mps: MPS is not available")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_model(model_dir: Path, device: str):
    """The trained Stage II model of ``model_dir`` (model.safetensors + config.json)."""
    from stcvq.nn.restorer import Stage2Model

    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        raise SystemExit(
            f"{model_dir}: no trained model here (needs config.json and model.safetensors); "
            "train one with `dvc repro` or pass --model DIR"
        )
    try:
        return Stage2Model.from_pretrained(model_dir).to(device).eval()
    except (ValueError, OSError, RuntimeError) as err:  # ConfigError is a ValueError
        raise SystemExit(f"{model_dir}: not a usable Stage II model: {str(err).splitlines()[0]}") from None


def embedded_default_notice(model, model_dir: Path) -> str | None:
    """One line for a model at the embedded default's scale (the pipeline's own 64x64 faces
    from one video): on a real video it gives a blur, and users should know why."""
    from stcvq.nn.export import read_provenance

    if model.size > 64 or read_provenance(model_dir) is not None:  # larger, or imported weights
        return None
    return (f"{model_dir} is a {model.size}x{model.size} model at the embedded default's scale (trained on one "
            f"person; below its input's PSNR on its own test clips): expect a soft face, not a restoration; "
            f"for real videos use a published model "
            f"(`stcvq import-reference --download {model.task}`, README \"Using the published models\")")


def _enhance_jobs(src: Path, dst: Path) -> tuple[list[tuple[Path, Path]], str | None]:
    """(input, output) pairs, or a usage problem found before any work. A folder of frames is
    one video; a folder of videos (and of frame folders) is one job each."""
    from stcvq.media.video import VIDEO_SUFFIXES, is_frame_folder

    if src.is_dir() and not is_frame_folder(src):
        if dst.exists() and not dst.is_dir():
            return [], f"-o {dst}: exists and is not a folder (a folder input needs an output folder)"
        inputs = [p for p in sorted(src.iterdir())
                  if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or is_frame_folder(p)]
        if not inputs:
            return [], f"{src}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) or frame folders"
        jobs = [(p, dst / (p.name if p.suffix.lower() in OUTPUT_SUFFIXES and p.is_file() else f"{p.stem}.mp4"))
                for p in inputs]
        names = [out.name for _, out in jobs]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            return [], f"{src}: several inputs would be written as {', '.join(clashes)}; rename them"
        return jobs, None
    if not src.exists():
        return [], f"{src}: no such file or folder"
    if dst.is_dir():
        return [], f"-o {dst}: is a folder; name the output file (e.g. {dst / src.with_suffix('.mp4').name})"
    problem = _container_problem("-o", dst)
    return ([], problem) if problem else ([(src, dst)], None)


def _container_problem(option: str, path: Path) -> str | None:
    if path.suffix.lower() in OUTPUT_SUFFIXES:
        return None
    kind = path.suffix or "a file without extension"
    return f"{option} {path}: cannot write H.264 video as {kind}; use {', '.join(OUTPUT_SUFFIXES)}"


def _enhance(args: argparse.Namespace) -> int:
    from stcvq.faces.detection import FaceModelError
    from stcvq.faces.tracks import TrackConfig
    from stcvq.inference.enhance import StreamConfig, enhance_file
    from stcvq.media.video import VideoError

    jobs, problem = _enhance_jobs(Path(args.input), Path(args.output))
    if not problem and args.compare is not None:
        problem = (_container_problem("--compare", Path(args.compare)) if len(jobs) == 1
                   else f"--compare {args.compare}: takes one input video, not a folder")
    if problem:
        print(f"stcvq enhance: error: {problem}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    model_dir = Path(args.model or f"models/stage2-{args.task}")
    model = load_model(model_dir, device)
    if getattr(model, "task", args.task) not in (None, args.task):
        raise SystemExit(f"{model_dir}: this model was trained for task '{model.task}', not '{args.task}'")
    notice = embedded_default_notice(model, model_dir)
    if notice:
        log.warning("%s", notice)
    dtype = args.dtype or ("bf16" if device == "cuda" else "float32")
    faces = {name: value for name, value in (("min_face", args.min_face), ("max_faces", args.max_faces))
             if value is not None}
    config = StreamConfig(
        overlap=args.overlap, batch_size=args.batch_size, device=device, dtype=dtype, crf=args.crf,
        framing=args.framing, fidelity=args.fidelity, blend_input=args.blend_input,
        tracks=TrackConfig(**faces) if faces else None,
    )
    failed = []
    for job_src, job_dst in jobs:
        try:
            report = enhance_file(job_src, job_dst, model, config, force=args.force, compare=args.compare)
            print(json.dumps(vars(report)), flush=True)
        except (VideoError, FaceModelError, OSError, ValueError) as err:  # one video's problem: report, go on
            log.error("%s", str(err).replace("\n", " "))
            failed.append((str(job_src), str(err)))
    if failed:
        log.error("%d of %d videos failed: %s", len(failed), len(jobs), ", ".join(src for src, _ in failed))
        return 1
    return 0


def _bench_enhance(args: argparse.Namespace) -> int:
    from stcvq.inference.bench import bench_enhance

    result = bench_enhance(
        profile=args.profile, task=args.task, frames=args.frames, size=args.size, attention=args.attention,
        token_layout=args.token_layout, dtype=args.dtype, device=resolve_device(args.device), repeats=args.repeats,
        model_dir=args.model,
    )
    print(json.dumps(result), flush=True)
    return 0


def _import_reference(args: argparse.Namespace) -> int:
    from stcvq.published import reference

    if (args.checkpoint is None) == (args.download is None):
        raise SystemExit("import-reference: give a checkpoint file or --download TASK (one of them)")
    if args.download is not None:
        from stcvq.published.download import RELEASE_BASE_URL, DownloadError, fetch_release

        task = args.download
        try:
            checkpoint = fetch_release(task, base_url=args.base_url or RELEASE_BASE_URL)
        except DownloadError as err:
            raise SystemExit(str(err)) from None
    else:
        checkpoint, task = Path(args.checkpoint), args.task
        if task is None and not args.stage1:
            raise SystemExit("import-reference: --task bfvr|deflicker|deflicker-pixel (or --stage1) "
                             "says what the file is")
    out = Path(args.output or f"models/published-{'stage1' if args.stage1 else task}")
    try:
        if args.stage1:
            reference.import_stage1_checkpoint(checkpoint, out)
        else:
            reference.import_checkpoint(checkpoint, task, out)
    except reference.ReferenceCheckpointError as err:
        raise SystemExit(str(err)) from None
    kind = "Stage I" if args.stage1 else f"Stage II ({task})"
    log.info("imported %s from %s into %s", kind, checkpoint, out)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from stcvq.evaluation.metrics import load_models
    from stcvq.evaluation.score import evaluate_paired
    from stcvq.io import write_json

    device = resolve_device(args.device)
    model = load_model(Path(args.model), device)
    metric_models = load_models(lpips_weights=args.lpips_weights, lpips_net=args.lpips_net,
                                raft_weights=args.raft_weights, arcface_weights=args.arcface_weights,
                                i3d_weights=args.i3d_weights, device=device)
    try:
        report = evaluate_paired(model, args.lq, args.gt, metric_models, frames=args.frames, size=args.size,
                                 max_clips=args.max_videos, faces=not args.no_faces, device=device)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    # the file has the evaluate stage's schema; timings vary run to run, so they go to stdout
    efficiency = report.pop("efficiency")
    write_json(args.output, report)
    print(json.dumps({"output": args.output, "task": report["task"], "videos": report["clips"],
                      "skipped": len(report["skipped"]), "efficiency": efficiency}), flush=True)
    if not report["clips"]:
        log.error("no pair could be scored: %s", report["skipped"])
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stcvq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    enhance = commands.add_parser("enhance", help="restore or de-flicker a video, or a folder of videos")
    enhance.add_argument("input",
                         help="a video file, a folder of PNG/JPG frames (rate in its fps.txt), or a folder of videos")
    enhance.add_argument("-o", "--output", required=True, help="output file (or folder, for a folder input)")
    enhance.add_argument("--task", choices=TASKS, required=True)
    enhance.add_argument("--model", help="trained Stage II folder (default: models/stage2-TASK)")
    enhance.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    enhance.add_argument("--dtype", choices=("float32", "bf16", "fp16"), help="default: bf16 on CUDA, else float32")
    framing = enhance.add_mutually_exclusive_group()
    framing.add_argument("--tracks", dest="framing", action="store_const", const="tracks",
                         help="enhance every tracked face, shot by shot, and paste each back")
    framing.add_argument("--face-crop", dest="framing", action="store_const", const="face",
                         help="enhance one fixed square around the longest face track and paste it back")
    framing.add_argument("--whole-frame", dest="framing", action="store_const", const="whole",
                         help="enhance the whole frame (for videos that already are face crops)")
    # auto: tracks when faces are found, whole-frame when there is none or one face fills the frame
    enhance.set_defaults(framing="auto")
    # the defaults in these two helps are TrackConfig's (tests/test_enhance_cli.py checks)
    enhance.add_argument("--min-face", type=_int_range(1), metavar="PX",
                         help="smallest face side in pixels that is tracked and enhanced (default 40)")
    enhance.add_argument("--max-faces", type=_int_range(1), metavar="N",
                         help="most face tracks per shot, the largest faces first (default 16)")
    enhance.add_argument("--fidelity", type=_unit_float, default=0.0, metavar="W",
                         help="0..1: 0 decodes the model's looked-up codes (default), 1 its encoder's own latent, "
                              "which keeps more of the input")
    enhance.add_argument("--blend-input", type=_unit_float, default=0.0, metavar="A",
                         help="0..1: share of the input frame mixed into the output (default 0)")
    enhance.add_argument("--compare", metavar="FILE",
                         help="also write input | output side by side, with the face squares and shot numbers")
    enhance.add_argument("--overlap", type=_int_range(0), default=4, help="frames blended between windows (default 4)")
    enhance.add_argument("--batch-size", type=_int_range(1), default=1, help="windows per model call")
    enhance.add_argument("--crf", type=_int_range(0, 51), default=15,
                         help="x264 quality of the output, 0..51 (default 15)")
    enhance.add_argument("--force", action="store_true", help="overwrite an existing output")
    enhance.set_defaults(run=_enhance)

    imp = commands.add_parser("import-reference",
                              help="import a published BFVR-STC checkpoint as an stcvq model folder")
    imp.add_argument("checkpoint", nargs="?", help="a .pth file of the reference implementation")
    imp.add_argument("--task", choices=TASKS, help="which published Stage II model the file is")
    imp.add_argument("--stage1", action="store_true", help="the file is a reference Stage I (VQAutoEncoder3D)")
    imp.add_argument("--download", choices=TASKS, metavar="TASK",
                     help="fetch the published file of TASK into the user cache first (resumes a partial download)")
    imp.add_argument("--base-url", help="with --download: a mirror of the release assets (default: the GitHub release)")
    imp.add_argument("-o", "--output", help="model folder to write (default: models/published-TASK)")
    imp.set_defaults(run=_import_reference)

    bench = commands.add_parser("bench", help="measure cost with random weights")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    be = bench_commands.add_parser("enhance", help="time enhancing a synthetic clip; prints one JSON object")
    be.add_argument("--profile", choices=("paper", "embedded", "tiny", "reference"), default="embedded",
                    help="a Stage II profile (stcvq.nn.restorer.PROFILES); reference: the published checkpoints' "
                         "network (trained at 512^2)")
    be.add_argument("--model", help="a model folder (e.g. an imported published model) instead of a profile")
    be.add_argument("--task", choices=TASKS, default="bfvr")
    be.add_argument("--frames", type=int, default=None, help="input frames (default: the model's clip length)")
    be.add_argument("--size", type=int, default=None, help="model input side (default: the profile's)")
    be.add_argument("--attention", choices=("global", "factorized"), default=None, help="autoencoder attention layout")
    be.add_argument("--token-layout", choices=("frame", "clip"), default=None, help="lookup transformer layout")
    be.add_argument("--dtype", choices=("float32", "bf16", "fp16"), default="float32")
    be.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    be.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up on GPU (best is kept)")
    be.set_defaults(run=_bench_enhance)

    ev = commands.add_parser("evaluate", help="score a model on a paired test set (degraded and ground-truth folders)")
    ev.add_argument("--model", required=True, help="Stage II folder (model.safetensors + config.json)")
    ev.add_argument("--lq", required=True, help="folder of degraded videos (or folders of frames)")
    ev.add_argument("--gt", required=True, help="folder of ground-truth videos, matched to --lq by name")
    ev.add_argument("-o", "--output", required=True, help="JSON report, the evaluate stage's schema")
    ev.add_argument("--frames", type=_int_range(1),
                    help="first frames scored per video (default: the model's clip length)")
    ev.add_argument("--size", type=_int_range(1), help="frames resized to SIZE x SIZE (default: the model's size)")
    ev.add_argument("--max-videos", type=_int_range(1), help="score only the first N pairs (by name)")
    ev.add_argument("--no-faces", action="store_true", help="skip AKD / IDS / Face-Cons (dlib, the slow part on CPU)")
    ev.add_argument("--lpips-weights", help="LPIPS weights (local path); without them LPIPS is null with a reason")
    ev.add_argument("--lpips-net", default="alex")
    ev.add_argument("--i3d-weights", help="TorchScript I3D for FVD; without it FVD is null with a reason")
    ev.add_argument("--raft-weights", help="RAFT flow weights; without them OpenCV DIS")
    ev.add_argument("--arcface-weights", help="ArcFace ONNX; without it the dlib face descriptor")
    ev.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    ev.set_defaults(run=_evaluate)
    return parser


def tune_cpu_allocator(mmap_threshold: int = 4 << 20) -> None:
    """Allocator settings for streaming inference; call before torch is imported.

    Transparent huge pages for torch's large allocations (torch reads THP_MEM_ALLOC_ENABLE at
    its first allocation): a fresh multi-GB feature map is otherwise first touched 4 KiB page
    by page, 3x slower. A fixed glibc mmap threshold: by default glibc raises it after large
    frees, mid-size buffers then stay on the heap, and peak RSS of a 240-frame video was 1.23x
    that of a 24-frame one (0.96-1.04x with it fixed; docs/benchmarks.md, "Enhancing"). Settings the
    user made in the environment win."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, mmap_threshold)  # -3: M_MMAP_THRESHOLD
        except (OSError, AttributeError):  # not glibc
            pass


def main(argv: list[str] | None = None) -> int:
    tune_cpu_allocator()  # THP only takes effect if torch is not imported yet
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
