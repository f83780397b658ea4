"""Video in and out: probing and streaming decode with PyAV, encoding with the ffmpeg binary.

Frames are numpy arrays, uint8, RGB, shape (H, W, 3). Decoding streams frame by frame so a
long video never has to fit in memory. Encoding pipes raw frames into the ffmpeg binary that
ships with ``imageio-ffmpeg`` (command lines built with ``ffmpeg-python``), writes to a
temporary file and renames it, and can copy the audio stream of another file.

Every failure is a :class:`VideoError` whose message starts with the file name.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import av
import numpy as np

from stcvq.io import atomic_path

log = logging.getLogger(__name__)


class VideoError(RuntimeError):
    """A video cannot be read or written. The message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float
    fps_fraction: str  # exact rate as "num/den", for re-encoding at the same rate
    num_frames: int  # counted by decoding when the container does not say
    duration: float  # seconds
    codec: str
    pix_fmt: str
    has_audio: bool


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary (imageio-ffmpeg's static build; it has libx264)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: unreadable: empty file (0 bytes)")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise VideoError(f"{path}: unreadable: {err}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: unreadable: no video stream")
    return container


def probe(path: str | Path, *, count_frames: bool = False) -> VideoInfo:
    """Stream facts of ``path``. ``count_frames`` decodes the whole file to count exactly."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        num_frames = int(stream.frames or 0)
        if count_frames or num_frames <= 0:
            num_frames = sum(1 for _ in _decode(container, Path(path)))
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = num_frames / float(rate) if rate else 0.0
        return VideoInfo(
            path=str(path),
            width=int(ctx.width),
            height=int(ctx.height),
            fps=float(rate),
            fps_fraction=f"{rate.numerator}/{rate.denominator}" if rate else "0/1",
            num_frames=num_frames,
            duration=duration,
            codec=ctx.name,
            pix_fmt=str(ctx.pix_fmt),
            has_audio=bool(container.streams.audio),
        )
    finally:
        container.close()


def _decode(container: av.container.InputContainer, path: Path) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(video=0)
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: unreadable: {err}") from None


def read_frames(
    path: str | Path,
    *,
    start: int = 0,
    stop: int | None = None,
    step: int = 1,
    gray: bool = False,
) -> Iterator[np.ndarray]:
    """Decode frames ``start:stop:step`` of ``path`` one at a time (RGB, or gray when asked)."""
    path = Path(path)
    container = _open(path)
    fmt = "gray" if gray else "rgb24"
    try:
        for index, frame in enumerate(_decode(container, path)):
            if stop is not None and index >= stop:
                break
            if index >= start and (index - start) % step == 0:
                yield frame.to_ndarray(format=fmt, interpolation=_SWS_DECODE)
    finally:
        container.close()


def read_video(path: str | Path, **kwargs) -> np.ndarray:
    """All (selected) frames of ``path`` as one (T, H, W, 3) uint8 array."""
    frames = list(read_frames(path, **kwargs))
    if not frames:
        raise VideoError(f"{path}: unreadable: no decodable frames")
    return np.stack(frames)


def sample_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``num_frames`` (all of them if fewer)."""
    if num_frames <= 0:
        return []
    if count >= num_frames:
        return list(range(num_frames))
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, count)})


def read_sampled(path: str | Path, count: int, num_frames: int | None = None) -> tuple[list[int], list[np.ndarray]]:
    """``count`` evenly spread frames of ``path``, with their indices (one decoding pass)."""
    if num_frames is None:
        num_frames = probe(path).num_frames
    wanted = sample_indices(num_frames, count)
    wanted_set = set(wanted)
    frames, indices = [], []
    for index, frame in enumerate(read_frames(path, stop=(wanted[-1] + 1) if wanted else 0)):
        if index in wanted_set:
            indices.append(index)
            frames.append(frame)
    return indices, frames


# swscale's SIMD colour conversions round differently from its C code, so YUV <-> RGB bytes
# depend on the CPU (its SSE2-only and SSSE3+ paths differ on carphone). accurate_rnd+bitexact
# selects the C-exact path on every CPU; bilinear is PyAV's default, bicubic the ffmpeg CLI's.
_SWS_DECODE = 0x2 | 0x40000 | 0x80000  # SWS_BILINEAR | SWS_ACCURATE_RND | SWS_BITEXACT
_SWS_ENCODE = "bicubic+accurate_rnd+bitexact"

# x264 settings that make encodes byte-identical run to run: one thread (frame-threaded
# x264 output depends on the thread count) and no encoder/version metadata.
_DETERMINISTIC = {"threads": 1, "fflags": "+bitexact", "map_metadata": -1, "sws_flags": _SWS_ENCODE}
# x264 picks its assembly from the CPU and the tiers do not give the same bytes (SSE2-only and
# none differ from SSSE3 and up on carphone); asm=0 runs its C code on every CPU, 4.5x slower
# on 512^2 frames here.
_X264_PORTABLE = "asm=0"


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float | str | Fraction,
    *,
    codec: str = "libx264",
    crf: int | None = 18,
    qp: int | None = None,
    pix_fmt: str = "yuv420p",
    preset: str = "medium",
    audio_from: str | Path | None = None,
    extra_output_args: dict | None = None,
    portable: bool = False,
) -> Path:
    """Encode RGB uint8 frames to ``path`` atomically; return ``path``.

    ``crf`` (or ``qp``; ``qp=0`` is lossless x264 in yuv444p/rgb) sets the quality for x264.
    For ``codec="ffv1"`` both are ignored. ``audio_from`` copies the first audio stream of
    that file (if it has one) into the output unchanged; every video frame is kept.
    ``portable`` runs x264 without CPU-specific assembly, so its bytes do not depend on the
    CPU's SIMD (the data stages use it; it costs encoding speed).
    """
    import ffmpeg  # ffmpeg-python only builds the command line

    path = Path(path)
    iterator = iter(frames)
    try:
        first = next(iterator)
    except StopIteration:
        raise VideoError(f"{path}: cannot write a video with no frames") from None
    first = _check_frame(first, path)
    height, width = first.shape[:2]
    if codec in ("libx264", "libx265") and pix_fmt.startswith("yuv420") and (height % 2 or width % 2):
        raise VideoError(f"{path}: {width}x{height} has an odd side; yuv420p needs even sides")

    rate = str(Fraction(fps).limit_denominator(1001000)) if not isinstance(fps, str) else fps
    video_in = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=rate)
    out_args: dict = {"vcodec": codec, "pix_fmt": pix_fmt, **_DETERMINISTIC}
    if codec in ("libx264", "libx265"):
        out_args["preset"] = preset
        if qp is not None:
            out_args["qp"] = qp
        elif crf is not None:
            out_args["crf"] = crf
        if portable and codec == "libx264":
            out_args["x264-params"] = _X264_PORTABLE
    if codec == "ffv1":
        out_args.update({"level": 3, "slices": 4, "slicecrc": 1})
    out_args.update(extra_output_args or {})

    streams = [video_in.video]
    if audio_from is not None and probe_has_audio(audio_from):
        streams.append(ffmpeg.input(str(audio_from)).audio)
        out_args["acodec"] = "copy"

    with atomic_path(path) as tmp:
        cmd = ffmpeg.output(*streams, str(tmp), **out_args).global_args("-y", "-loglevel", "error", "-nostdin")
        args = cmd.compile(cmd=ffmpeg_exe())
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        count = 0
        try:
            for frame in _chain(first, iterator):
                frame = _check_frame(frame, path)
                if frame.shape[:2] != (height, width):
                    raise VideoError(f"{path}: frame {count} is {frame.shape[1]}x{frame.shape[0]}, expected {width}x{height}")
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                count += 1
        except BrokenPipeError:
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdin:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
        stderr = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise VideoError(f"{path}: ffmpeg failed: {stderr.strip()}")
    log.debug("wrote %s: %d frames %dx%d at %s fps (%s)", path, count, width, height, rate, codec)
    return path


def probe_has_audio(path: str | Path) -> bool:
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except av.error.FFmpegError:
        return False


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _check_frame(frame: np.ndarray, path: Path) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise VideoError(f"{path}: frames must be (H, W, 3) RGB, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise VideoError(f"{path}: frames must be uint8, got {frame.dtype}")
    return frame


def encode_decode_roundtrip(frames: Sequence[np.ndarray], fps: float, crf: int, workdir: str | Path) -> np.ndarray:
    """Compress ``frames`` with real libx264 at ``crf`` and decode them back (Eq. 9's ffmpeg_crf)."""
    out = Path(workdir) / f"crf{crf}.mp4"
    write_video(out, frames, fps, crf=crf, portable=True)
    try:
        return read_video(out)
    finally:
        out.unlink(missing_ok=True)
