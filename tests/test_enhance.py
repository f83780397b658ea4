"""Streaming enhancement: windows, blending, framing and file handling, with toy models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from stcvq.inference.enhance import (
    StreamConfig,
    WholeFrame,
    enhance_file,
    output_pix_fmt,
    restore_stream,
    window_weights,
)
from stcvq.media import video


class Identity:
    def __init__(self, clip_length=8, size=32):
        self.clip_length, self.size, self.calls = clip_length, size, []

    def restore(self, clips):
        assert clips.shape[1:] == (3, self.clip_length, self.size, self.size)
        self.calls.append(clips.shape[0])
        return clips.clone()


class WindowOffset(Identity):
    """Adds a different brightness to every window: what a seam would show without blending."""

    def restore(self, clips):
        out = []
        for clip in clips:
            out.append(clip + 0.1 * (len(self.calls) % 2))
            self.calls.append(1)
        return torch.stack(out)


def _ident(frame):
    return frame


def _back(restored, original):
    return restored


@pytest.mark.parametrize("num_frames", [1, 7, 8, 9, 12, 23, 40])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_stream_returns_every_frame_once_in_order(num_frames, batch_size):
    rng = np.random.default_rng(num_frames)
    frames = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(num_frames)]
    model = Identity()
    out = list(restore_stream(iter(frames), model, _ident, _back, StreamConfig(overlap=3, batch_size=batch_size)))
    assert len(out) == num_frames
    for a, b in zip(out, frames):
        np.testing.assert_array_equal(a, b)  # identity model + weights that sum to one


def test_window_weights_sum_to_one_across_a_seam():
    length, overlap = 8, 3
    first = window_weights(length, overlap, 0, blend_start=False)
    second = window_weights(length, overlap, 0, blend_start=True)
    stride = length - overlap
    seam = first[stride:] + second[:overlap]
    np.testing.assert_allclose(seam, 1.0, rtol=1e-6)
    assert first[0] == 1.0 and second[overlap] == 1.0


def test_blending_spreads_a_window_change_over_the_overlap():
    static = [np.full((32, 32, 3), 100, np.uint8)] * 30
    overlap = 4

    def max_step(cfg):
        out = np.stack(list(restore_stream(iter(static), WindowOffset(), _ident, _back, cfg))).astype(int)
        return np.abs(np.diff(out, axis=0)).max()

    hard, blended = max_step(StreamConfig(overlap=0)), max_step(StreamConfig(overlap=overlap))
    # 0.1 * 255 = 25.5 grey levels between windows: a cut jumps it at once, a blend in steps.
    assert hard >= 25
    assert blended <= int(np.ceil(25.5 / (overlap + 1))) + 1


def test_whole_frame_framing_keeps_aspect_and_inverts():
    noise = np.random.default_rng(0).integers(0, 256, (27, 45, 3), dtype=np.uint8)
    frame = cv2.GaussianBlur(noise, (5, 5), 1.5)  # natural images are smooth, noise is not
    framing = WholeFrame(27, 45, size=90)
    square = framing.to_model(frame)
    assert square.shape == (90, 90, 3)
    back = framing.from_model(square, frame)
    assert back.shape == frame.shape
    assert np.abs(back.astype(int) - frame).mean() < 3


def test_output_pix_fmt_handles_odd_sides():
    info = video.VideoInfo("x", 33, 27, 25.0, "25/1", 3, 0.12, "h264", "yuv420p", False)
    assert output_pix_fmt(info) == "yuv444p"
    even = video.VideoInfo("x", 32, 28, 25.0, "25/1", 3, 0.12, "h264", "yuv420p", False)
    assert output_pix_fmt(even) == "yuv420p"


@pytest.mark.parametrize("num_frames, size", [(1, (48, 64)), (7, (27, 33)), (20, (144, 176))])
def test_enhance_file_keeps_count_size_and_fps(tmp_path, carphone_path, num_frames, size):
    h, w = size
    frames = [f[:h, :w] for f in video.read_frames(carphone_path, stop=num_frames)]
    pix_fmt = "yuv444p" if (h % 2 or w % 2) else "yuv420p"
    src = video.write_video(tmp_path / "in.mp4", frames, "30000/1001", pix_fmt=pix_fmt)
    dst = tmp_path / "out.mp4"
    report = enhance_file(src, dst, Identity(), StreamConfig(overlap=2), progress=False)
    info = video.probe(dst, count_frames=True)
    assert (info.num_frames, info.height, info.width, info.fps_fraction) == (num_frames, h, w, "30000/1001")
    assert report.frames == num_frames
    restored = video.read_video(dst)
    assert np.abs(restored.astype(int) - np.stack(frames)).mean() < 15  # identity through resize + x264


def test_enhance_file_copies_audio_and_refuses_overwrite(tmp_path, bunny_path):
    frames = [f[::8, ::8] for f in video.read_frames(bunny_path, stop=12)]
    src = video.write_video(tmp_path / "in.mp4", frames, 25, audio_from=bunny_path)
    dst = tmp_path / "out.mp4"
    enhance_file(src, dst, Identity(), progress=False)
    assert video.probe(dst).has_audio
    with pytest.raises(FileExistsError, match="--force"):
        enhance_file(src, dst, Identity(), progress=False)
    enhance_file(src, dst, Identity(), force=True, progress=False)


def test_enhance_file_unreadable_input_names_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(video.VideoError, match="broken.mp4"):
        enhance_file(bad, tmp_path / "out.mp4", Identity(), progress=False)
    assert not (tmp_path / "out.mp4").exists()
