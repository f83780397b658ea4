"""Video in and out: probing and streaming decode with PyAV, encoding with the ffmpeg binary.

Frames are numpy arrays, uint8, RGB, shape (H, W, 3). Decoding streams frame by frame so a
long video never has to fit in memory. Encoding pipes raw frames into the ffmpeg binary that
ships with ``imageio-ffmpeg`` (command lines built with ``ffmpeg-python``), writes to a
temporary file and renames it, and can copy the audio stream of another file.

A folder of numbered PNG/JPG frames is one video too (:func:`is_frame_folder`): :func:`probe`
and :func:`read_frames` read it, in natural order of the file names, at the rate in its
``fps.txt`` or JSON sidecar.

Every failure is a :class:`VideoError` whose message starts with the file name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import av
import numpy as np

from stcvq.io import atomic_path

log = logging.getLogger(__name__)


VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"}


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
    if Path(path).is_dir():
        return probe_frame_folder(path, count_frames=count_frames)
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


def chroma_shifts(pix_fmt: str) -> tuple[int, int]:
    """log2 of the chroma subsampling of ``pix_fmt``, (horizontal, vertical): (0, 0) for RGB,
    palette and 4:4:4 formats, (1, 0) for 4:2:2, (1, 1) for 4:2:0; gray and unknown formats
    count as 4:2:0 (no colour detail to keep)."""
    try:
        fmt = av.VideoFormat(pix_fmt, 64, 64)
    except (ValueError, av.error.FFmpegError):
        return 1, 1
    if fmt.is_rgb or fmt.has_palette:
        return 0, 0
    if len(fmt.components) < 3:  # gray (with alpha or not)
        return 1, 1
    chroma = fmt.components[1]  # luma, chroma, chroma[, alpha] (PyAV's is_chroma is unreliable)
    return (64 // chroma.width).bit_length() - 1, (64 // chroma.height).bit_length() - 1


@dataclasses.dataclass(frozen=True)
class FrameTimes:
    """Presentation times of a video's frames in display order, in ticks of ``time_base``."""

    pts: tuple[int, ...]
    time_base: Fraction

    def regular_rate(self, declared: Fraction | None = None) -> Fraction | None:
        """The frame rate when consecutive frames are evenly spaced (one tick of rounding
        allowed), None when they are not or there are fewer than two frames. It is the
        ``declared`` rate (the container's) when that puts the last frame within one tick of
        where it is, else the rate measured from the timestamps."""
        steps = np.diff(np.asarray(self.pts, dtype=np.int64))
        if len(steps) == 0 or steps.min() <= 0 or steps.max() - steps.min() > 1:
            return None
        span = Fraction(int(self.pts[-1] - self.pts[0])) * self.time_base
        if declared and abs(len(steps) / declared - span) <= self.time_base:
            return declared
        return (len(steps) / span).limit_denominator(1001)  # exact for 30000/1001, 25/3, ...


def frame_times(path: str | Path) -> FrameTimes | None:
    """The presentation time of every frame, read from the packets without decoding; None
    when a packet carries no timestamp (raw streams) or ``path`` is a frame folder (its rate is
    constant), so there is no timing to keep."""
    path = Path(path)
    if is_frame_folder(path):
        return None
    container = _open(path)
    try:
        stream = container.streams.video[0]
        pts = []
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream flush packet
                continue
            if packet.pts is None:
                return None
            if not packet.is_discard:  # dropped by the decoder (edit lists)
                pts.append(int(packet.pts))
        return FrameTimes(tuple(sorted(pts)), Fraction(stream.time_base))
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: unreadable: {err}") from None
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
    if path.is_dir():
        yield from _read_frame_folder(path, start, stop, step, gray)
        return
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


# -- image-sequence folders ---------------------------------------------------------------
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
FPS_SIDECAR = "fps.txt"  # the frame rate as a number or "num/den"; else a *.json with an "fps" key
SIDECAR_SUFFIXES = (".txt", ".json")  # may sit beside the frames (the rate, notes, landmarks)


def frame_files(folder: str | Path) -> list[Path]:
    """The PNG/JPG files directly in ``folder``, in natural order (frame2 before frame10)."""

    def natural(p: Path) -> tuple[list[str | int], str]:
        # re.split with a group alternates text and digits, so keys compare item by item
        return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)], p.name

    files = [p for p in Path(folder).iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in FRAME_SUFFIXES]
    return sorted(files, key=natural)


def is_frame_folder(path: str | Path) -> bool:
    """A folder of PNG/JPG frames, one video: images and .txt/.json sidecars, nothing else (a
    folder that also holds a video or a sub-folder is a folder of files, so nothing in it is lost)."""
    path = Path(path)
    return path.is_dir() and _frame_folder_problem(path) is None


def _frame_folder_problem(folder: Path) -> str | None:
    others = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")
                    and not (p.is_file() and p.suffix.lower() in FRAME_SUFFIXES + SIDECAR_SUFFIXES))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"holds more than frames and .txt/.json sidecars: {shown}"
    if not frame_files(folder):
        return "no PNG/JPG frames in the folder"
    return None


def frame_folder_fps(folder: str | Path) -> Fraction | None:
    """The rate in ``folder``'s sidecar: ``fps.txt``, else the first ``*.json`` with an ``"fps"``
    key; None when there is neither."""
    folder = Path(folder)
    sidecar = folder / FPS_SIDECAR
    if sidecar.is_file():
        text = sidecar.read_text(errors="replace").strip()
        return _positive_rate(text, sidecar)
    for meta in sorted(folder.glob("*.json")):
        try:
            data = json.loads(meta.read_text(errors="replace"))
        except json.JSONDecodeError as err:
            raise VideoError(f"{meta}: not JSON ({err})") from None
        if isinstance(data, dict) and "fps" in data:
            return _positive_rate(data["fps"], meta)
    return None


def _positive_rate(value: object, source: Path) -> Fraction:
    try:
        rate = Fraction(str(value)).limit_denominator(1001000)
    except (ValueError, ZeroDivisionError):
        rate = Fraction(0)
    if rate <= 0:
        raise VideoError(f"{source}: not a frame rate: {value!r} (write a positive number such as 25 or 30000/1001)")
    return rate


def probe_frame_folder(folder: str | Path, *, count_frames: bool = False) -> VideoInfo:
    """:func:`probe` of a frame folder: sizes from the image headers (all must agree), the rate
    from its sidecar; ``count_frames`` decodes every frame."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    problem = _frame_folder_problem(folder)
    if problem:
        raise VideoError(f"{folder}: unreadable: {problem}")
    files = frame_files(folder)
    rate = frame_folder_fps(folder)
    if rate is None:
        raise VideoError(f"{folder}: unreadable: no frame rate; write it to {folder / FPS_SIDECAR} (e.g. 25)")
    size = None
    for file in files:
        try:
            with Image.open(file) as image:
                here = image.size
        except (OSError, UnidentifiedImageError) as err:
            raise VideoError(f"{folder}: unreadable: frame {file.name}: {err}") from None
        if size is None:
            size = here
        elif here != size:
            raise VideoError(f"{folder}: unreadable: frames differ in size: {file.name} is {here[0]}x{here[1]}, "
                             f"{files[0].name} is {size[0]}x{size[1]}")
    if count_frames:
        for _ in _read_frame_folder(folder, 0, None, 1, False):
            pass
    codecs = sorted({"png" if f.suffix.lower() == ".png" else "mjpeg" for f in files})
    return VideoInfo(
        path=str(folder), width=size[0], height=size[1], fps=float(rate),
        fps_fraction=f"{rate.numerator}/{rate.denominator}", num_frames=len(files),
        duration=len(files) / float(rate), codec="+".join(codecs),
        pix_fmt="rgb24", has_audio=False,
    )


def _read_frame_folder(folder: Path, start: int, stop: int | None, step: int, gray: bool) -> Iterator[np.ndarray]:
    import cv2

    files = frame_files(folder)
    if not files:
        raise VideoError(f"{folder}: unreadable: no PNG/JPG frames in the folder")
    shape = None
    for file in files[start:stop:step]:
        # IMREAD_COLOR: 8-bit, 3 channels, whatever the file holds (gray, palette, 16-bit, alpha)
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise VideoError(f"{folder}: unreadable: frame {file.name} cannot be decoded")
        if shape is None:
            shape = bgr.shape
        elif bgr.shape != shape:
            raise VideoError(f"{folder}: unreadable: frames differ in size: "
                             f"{file.name} is {bgr.shape[1]}x{bgr.shape[0]}, the first is {shape[1]}x{shape[0]}")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY if gray else cv2.COLOR_BGR2RGB)


# swscale's SIMD colour conversions round differently from its C code, so YUV <-> RGB bytes
# depend on the CPU (its SSE2-only and SSSE3+ paths differ on carphone). accurate_rnd+bitexact
# selects the C-exact path on every CPU; bilinear is PyAV's default, bicubic the ffmpeg CLI's.
_SWS_DECODE = 0x2 | 0x40000 | 0x80000  # SWS_BILINEAR | SWS_ACCURATE_RND | SWS_BITEXACT
_SWS_ENCODE = "bicubic+accurate_rnd+bitexact"

# x264 settings that make encodes byte-identical run to run: one thread (frame-threaded
# x264 output depends on the thread count) and no encoder/version metadata.
_DETERMINISTIC = {"threads": 1, "fflags": "+bitexact", "map_metadata": -1, "sws_flags": _SWS_ENCODE}
# x264 picks its assembly from the CPU and the tiers do not give the same bytes (SSE2-only and
# none differ from SSSE3 and up on carphone); asm=0 runs its C code on every CPU, at a cost in
# time (docs/reproducibility.md), so only the data stages ask for it.
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
    times: FrameTimes | None = None,
    portable: bool = False,
) -> Path:
    """Encode RGB uint8 frames to ``path`` atomically; return ``path``.

    ``crf`` (or ``qp``; ``qp=0`` is lossless x264 in yuv444p/rgb) sets the quality for x264.
    For ``codec="ffv1"`` both are ignored. ``audio_from`` copies the first audio stream of
    that file (if it has one) into the output unchanged; every video frame is kept.
    ``times`` gives frame i the timestamp ``times.pts[i]`` instead of ``i / fps`` (a
    variable-rate video keeps its timing, so copied audio stays in sync).
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
    out_args: dict = {"vcodec": codec, "pix_fmt": pix_fmt, **_DETERMINISTIC}
    if times is None:
        video_in = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=rate)
    else:
        # Raw frames on a pipe have no timestamps; raw frames in a NUT stream do, and ffmpeg
        # hands them to the encoder unchanged, in the input's own time base.
        video_in = ffmpeg.input("pipe:", format="nut")
        out_args.update({"fps_mode": "passthrough", "enc_time_base": "demux"})
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
        sink = _RawSink(proc.stdin) if times is None else _TimedSink(proc.stdin, width, height, times, path)
        count = 0
        try:
            for frame in _chain(first, iterator):
                frame = _check_frame(frame, path)
                if frame.shape[:2] != (height, width):
                    raise VideoError(f"{path}: frame {count} is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"expected {width}x{height}")
                sink.write(frame)
                count += 1
            sink.close()
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
            raise VideoError(f"{path}: ffmpeg failed: {_one_line(stderr, tmp, path)}")
    log.debug("wrote %s: %d frames %dx%d at %s fps (%s)", path, count, width, height, rate, codec)
    return path


class _RawSink:
    def __init__(self, pipe):
        self.pipe = pipe

    def write(self, frame: np.ndarray) -> None:
        self.pipe.write(np.ascontiguousarray(frame).tobytes())

    def close(self) -> None:
        pass


class _TimedSink:
    """Raw RGB frames muxed into NUT with their timestamps (PyAV), for ffmpeg to read."""

    def __init__(self, pipe, width: int, height: int, times: FrameTimes, path: Path):
        self.times, self.path, self.index = times, path, 0
        self.container = av.open(pipe, mode="w", format="nut")
        self.stream = self.container.add_stream("rawvideo")
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "rgb24"
        # both, or the encoder rescales the timestamps to its default 1/24 s ticks
        self.stream.time_base = self.stream.codec_context.time_base = times.time_base

    def write(self, frame: np.ndarray) -> None:
        if self.index >= len(self.times.pts):
            raise VideoError(f"{self.path}: more frames than timestamps ({len(self.times.pts)})")
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        out.pts, out.time_base = self.times.pts[self.index], self.times.time_base
        self.index += 1
        for packet in self.stream.encode(out):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def _one_line(stderr: str, tmp: Path, path: Path) -> str:
    """ffmpeg's first complaint (the cause; the lines after it say how it unwound), naming
    the output rather than its hidden temp file, without ffmpeg's "[muxer @ 0x...]" tag."""
    lines = [re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", line.strip()) for line in stderr.splitlines() if line.strip()]
    return lines[0].replace(str(tmp), str(path)) if lines else "no message"


def probe_has_audio(path: str | Path) -> bool:
    if Path(path).is_dir():  # a frame folder has no sound
        return False
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
