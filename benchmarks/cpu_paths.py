"""Which bytes depend on the CPU: hashes of each byte-making step with CPU-specific code paths
switched off one by one, imitating older or different CPUs on this one.

Usage: .venv/bin/python benchmarks/cpu_paths.py [--quick] [--data]

Prints one JSON object. Each check runs in a fresh process per variant, because the switches
are read once per process:

* PyAV's swscale (decoding to RGB): ``av_force_cpu_flags`` on the bundled libavutil (ctypes);
* the ffmpeg binary's swscale (RGB -> yuv420p when encoding): ``-cpuflags``;
* libx264: ``-x264-params asm=...`` (``-cpuflags`` does not reach it: it still logs AVX512);
* OpenCV: ``OPENCV_IPP=avx2|sse42|disabled`` picks Intel IPP's path, ``OPENCV_CPU_DISABLE``
  turns off OpenCV's own dispatched code;
* the derived embedded videos as ``ingest`` writes them, under all of the above at once
  (x264 excepted: ``ingest`` runs it without assembly on every CPU).

``--data`` adds ``crop`` (the cropped videos and boxes) and ``shards`` (every task's shards)
under the same imitated machines, from the pipeline's ``data/`` (run ``make repro`` first).
``same`` is true when every variant of a check gave one hash. ``--quick`` decodes fewer frames.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# libavutil's AV_CPU_FLAG_* bits for x86
_AVX512 = 0x100000 | 0x200000  # AVX512 | AVX512ICL
SSE2_ONLY = 0x1 | 0x2 | 0x8 | 0x10  # MMX | MMXEXT | SSE | SSE2
X264_TIERS = {
    "auto": None,
    "avx2": "MMX2,SSE2Fast,SSSE3,SSE4.2,AVX,FMA3,BMI2,AVX2",
    "ssse3": "MMX2,SSE2Fast,SSSE3",
    "sse2": "MMX2,SSE2Fast",
    "none": "0",
}


def _md5(chunks) -> str:
    h = hashlib.md5()
    for c in chunks:
        h.update(c if isinstance(c, bytes) else c.tobytes())
    return h.hexdigest()[:12]


def _force_av_flags(spec: str) -> None:
    import av

    libs = glob.glob(os.path.join(os.path.dirname(av.__file__), "..", "av.libs", "libavutil*"))
    if not libs:
        raise SystemExit("PyAV without bundled FFmpeg libraries: cannot switch its CPU flags")
    lib = ctypes.CDLL(libs[0])
    if spec == "native":
        return
    native = lib.av_get_cpu_flags()
    lib.av_force_cpu_flags({"no-avx512": native & ~_AVX512, "sse2": SSE2_ONLY, "none": 0}[spec])


def _ffmpeg_cpuflags(flags: str, folder: Path) -> None:
    """Make stcvq.media.video run the ffmpeg binary with ``-cpuflags flags`` (nothing for "native")."""
    from stcvq.media import video

    wrapper = folder / "ffmpeg"
    arg = "" if flags == "native" else f"-cpuflags {flags} "
    wrapper.write_text(f"#!/bin/sh\nexec '{video.ffmpeg_exe()}' {arg}\"$@\"\n")
    wrapper.chmod(0o755)
    video.ffmpeg_exe = lambda: str(wrapper)


def _source() -> Path:
    from stcvq.data.curate.ingest import embedded_source_dir

    return embedded_source_dir() / "carphone_pristine.mp4"


def child(check: str, variant: str, frames: int) -> str:
    """One hash: ``check`` under ``variant`` (runs in its own process)."""
    from stcvq.media import video

    src = _source()
    if check in ("decode_default", "decode_stcvq"):
        _force_av_flags(variant)
        import av

        if check == "decode_stcvq":
            return _md5(video.read_frames(src, stop=frames))
        with av.open(str(src)) as c:
            return _md5(f.to_ndarray(format="rgb24") for f, _ in zip(c.decode(video=0), range(frames)))
    if check in ("encode_default", "encode_stcvq"):
        rgb = list(video.read_frames(src, stop=frames))
        with tempfile.TemporaryDirectory() as d:
            _ffmpeg_cpuflags(variant, Path(d))
            if check == "encode_default":
                video._DETERMINISTIC.pop("sws_flags")
            out = video.write_video(Path(d) / "o.mp4", rgb, 30, crf=18, portable=True)  # x264 in C either way
            return _md5([out.read_bytes()])
    if check in ("x264_default", "x264_x4"):  # portable=True pins asm=0, the last tier here, on every CPU
        rgb = list(video.read_frames(src, stop=frames))
        if check == "x264_x4":  # carphone_x4's size: x264's AVX-512 code differs from its AVX2 code here
            from stcvq.media import resample

            rgb = [resample.resize(f, 704, 576) for f in rgb]
        with tempfile.TemporaryDirectory() as d:
            asm = X264_TIERS[variant]
            extra = {"x264-params": f"asm={asm}"} if asm else {}
            out = video.write_video(Path(d) / "o.mp4", rgb, 30, crf=18, extra_output_args=extra)
            return _md5([out.read_bytes()])
    if check in ("resize_cv2", "resize_stcvq"):
        import cv2

        from stcvq.media import resample

        rgb = list(video.read_frames(src, stop=frames))
        if check == "resize_cv2":
            return _md5(cv2.resize(f, (704, 576), interpolation=cv2.INTER_CUBIC) for f in rgb)
        return _md5(resample.resize(f, 704, 576) for f in rgb)
    if check == "ingest_derived":
        av_flags, cpuflags = variant.split("|")
        _force_av_flags(av_flags)
        from stcvq.data.curate.ingest import IngestConfig, make_derived

        with tempfile.TemporaryDirectory() as d:
            _ffmpeg_cpuflags(cpuflags, Path(d))
            hashes = []
            for derivation in ("caption", "x4", "halffps"):
                target = Path(d) / f"{derivation}.mp4"
                make_derived(src, derivation, target, IngestConfig())
                hashes.append(f"{derivation}={hashlib.md5(target.read_bytes()).hexdigest()}")
            return " ".join(hashes)
    if check in ("crop", "shards"):  # from the pipeline's own data/ (run `make repro` first)
        av_flags, cpuflags = variant.split("|")
        _force_av_flags(av_flags)
        import pandas as pd

        with tempfile.TemporaryDirectory() as d:
            _ffmpeg_cpuflags(cpuflags, Path(d))
            out = Path(d) / "out"
            out.mkdir()
            if check == "crop":
                from stcvq.data.curate.crop import CropConfig, CropJob, measure_crop

                rows = pd.read_parquet(ROOT / "data/manifests/ingest.parquet").to_dict("records")
                boxes = [t.get("crop_squares") for r in rows if r["video_id"].startswith("carphone")
                         for t in measure_crop(r, CropJob(CropConfig(), 64, str(out)))]
                return _md5([json.dumps(boxes).encode()] + [p.read_bytes() for p in sorted(out.iterdir())])
            from pipeline.common import load_params
            from stcvq.config import from_dict
            from stcvq.data.degrade import SynthesisConfig
            from stcvq.data.shards import ShardConfig
            from stcvq.data.synthesize import write_task_shards

            params = load_params("synthesize", "shards", "seed", "clips")
            hashes = []
            for task in ("bfvr", "deflicker", "deflicker-pixel"):
                section = {task.replace("-", "_"): params["synthesize"].get(task, {})}
                synth = from_dict(SynthesisConfig, section, where="params")
                folder = out / task
                folder.mkdir()
                write_task_shards(pd.read_parquet(ROOT / "data/clips.parquet"), task, synth,
                                  from_dict(ShardConfig, params["shards"], where="params"), folder, seed=params["seed"],
                                  workers=1, splits=list(params["clips"].get("splits") or []))
                hashes.append(f"{task}={_md5(p.name.encode() + p.read_bytes() for p in sorted(folder.iterdir()))}")
            return " ".join(hashes)
    raise SystemExit(f"unknown check {check!r}")


def _run(check: str, variant: str, frames: int, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, __file__, "--child", check, variant, str(frames)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{check} {variant}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    frames = 60 if "--quick" in sys.argv else 1000
    av_variants = ["native", "no-avx512", "sse2", "none"]
    cpuflags = ["native", "-avx512-avx512icl", "sse2", "0"]
    ipp = {"ipp-native": {}, "ipp-avx2": {"OPENCV_IPP": "avx2"}, "ipp-sse42": {"OPENCV_IPP": "sse42"},
           "ipp-off": {"OPENCV_IPP": "disabled"}}
    result: dict = {}

    def record(name: str, runs: dict[str, str]) -> None:
        result[name] = {"hashes": runs, "same": len(set(runs.values())) == 1}
        print(name, json.dumps(result[name]), file=sys.stderr, flush=True)

    for check in ("decode_default", "decode_stcvq"):
        record(check, {v: _run(check, v, frames) for v in av_variants})
    for check in ("encode_default", "encode_stcvq"):
        record(check, {v: _run(check, v, frames) for v in cpuflags})
    for check in ("x264_default", "x264_x4"):
        record(check, {v: _run(check, v, frames) for v in X264_TIERS})
    for check in ("resize_cv2", "resize_stcvq"):
        record(check, {v: _run(check, "native", min(frames, 40), env) for v, env in ipp.items()})
    machines = {  # imitated CPUs: every switch at once
        "native": ("native|native", {}),
        "avx2-no-avx512": ("no-avx512|-avx512-avx512icl", {"OPENCV_IPP": "avx2", "OPENCV_CPU_DISABLE": "AVX512-SKX"}),
        "sse-era": ("sse2|sse2", {"OPENCV_IPP": "sse42", "OPENCV_CPU_DISABLE": "AVX512-SKX,AVX2,FP16,AVX"}),
    }
    record("ingest_derived", {m: _run("ingest_derived", v, frames, env) for m, (v, env) in machines.items()})
    if "--data" in sys.argv:
        for check in ("crop", "shards"):
            record(check, {m: _run(check, v, frames, env) for m, (v, env) in machines.items()})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(child(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        main()
