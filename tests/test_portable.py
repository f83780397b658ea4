"""Bytes the data stages make do not depend on the CPU: the integer resampler, and decode/encode
through swscale's exact path even when its SIMD code is switched off."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stcvq.media import resample, video


def _pattern(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 7 + yy * 3) % 256, (xx * yy) % 256, (255 - 2 * yy) % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("n_in,n_out", [(176, 704), (144, 64), (97, 64), (1280, 400), (40, 64), (5, 5), (3, 1), (1, 4)])
def test_weights_are_integers_summing_to_one(n_in, n_out):
    index, weight = resample.axis_weights(n_in, n_out)
    assert index.shape == weight.shape and index.shape[0] == n_out
    assert (weight.sum(axis=1) == 1 << resample.BITS).all()
    assert index.min() >= 0 and index.max() < n_in


@pytest.mark.parametrize("size", [(64, 64), (704, 576), (37, 23), (176, 144)])
def test_constant_image_stays_constant(size):
    image = np.full((144, 176, 3), 173, dtype=np.uint8)
    out = resample.resize(image, *size)
    assert out.shape == (size[1], size[0], 3) and out.dtype == np.uint8
    assert (out == 173).all()


def test_integer_factor_shrink_is_the_block_mean():
    image = _pattern(64, 128)  # 4x4 blocks: weights of 1/4 are exact in 14 bits
    out = resample.resize(image, 32, 16)
    blocks = image.reshape(16, 4, 32, 4, 3).astype(np.int64).sum(axis=(1, 3))
    assert np.array_equal(out, ((blocks * 2 + 16) // 32).astype(np.uint8))  # mean of 16, rounded half up


def test_close_to_opencv_own_resize():
    image = _pattern(144, 176)
    was = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)  # OpenCV's own code; IPP's differs by CPU (the reason for resample)
    try:
        for (w, h), interp in [((704, 576), cv2.INTER_CUBIC), ((64, 64), cv2.INTER_AREA), ((44, 36), cv2.INTER_AREA)]:
            ours = resample.resize(image, w, h).astype(int)
            theirs = cv2.resize(image, (w, h), interpolation=interp).astype(int)
            assert np.abs(ours - theirs).max() <= 1, (w, h)
    finally:
        cv2.ipp.setUseIPP(was)


def test_same_size_is_a_copy_and_gray_works():
    image = _pattern(20, 30)
    out = resample.resize(image, 30, 20)
    assert np.array_equal(out, image) and out is not image
    assert resample.resize(image[..., 0], 60, 40).shape == (40, 60)
    with pytest.raises(ValueError):
        resample.resize(image.astype(np.float32), 10, 10)


def test_bytes_are_pinned():
    # the integer maths has one answer; a change here changes every dataset built with it
    out = resample.resize(_pattern(144, 176), 704, 576)
    assert hashlib.md5(out.tobytes()).hexdigest() == PINNED_X4


PINNED_X4 = "b3ccd03673a73f8fa66753bda3fa4b1e"

_DECODE_MD5 = """
import ctypes, glob, hashlib, os, sys
import av
lib = glob.glob(os.path.join(os.path.dirname(av.__file__), '..', 'av.libs', 'libavutil*'))
if not lib:
    print('no-bundled-libavutil'); sys.exit(0)
ctypes.CDLL(lib[0]).av_force_cpu_flags(int(sys.argv[2]))
from stcvq.media.video import read_frames
h = hashlib.md5()
for f in read_frames(sys.argv[1], stop=12):
    h.update(f.tobytes())
print(h.hexdigest())
"""


def _decode_md5(path: Path, cpu_flags: int) -> str:
    proc = subprocess.run([sys.executable, "-c", _DECODE_MD5, str(path), str(cpu_flags)],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    return proc.stdout.strip()


def test_decode_does_not_depend_on_swscale_simd(carphone_path):
    # -1: the CPU's own flags; 0: no SIMD at all. swscale's default path differs between them.
    detected, plain = _decode_md5(carphone_path, -1), _decode_md5(carphone_path, 0)
    if detected == "no-bundled-libavutil":
        pytest.skip("PyAV without bundled FFmpeg libraries")
    assert detected == plain


def test_encode_does_not_depend_on_swscale_simd(tmp_path, monkeypatch):
    frames = [_pattern(144, 176)[:, ::-1] // (1 + i % 3) for i in range(6)]
    native = video.write_video(tmp_path / "native.mp4", frames, 25, crf=18, portable=True).read_bytes()
    wrapper = tmp_path / "ffmpeg-sse2"  # the same ffmpeg told to use SSE2 only, like an old CPU
    wrapper.write_text(f"#!/bin/sh\nexec '{video.ffmpeg_exe()}' -cpuflags sse2 \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(video, "ffmpeg_exe", lambda: str(wrapper))
    assert video.write_video(tmp_path / "sse2.mp4", frames, 25, crf=18, portable=True).read_bytes() == native
