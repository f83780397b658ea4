"""Streaming enhancement: windows, blending, framing and file handling, with toy models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from stcvq.faces.tracks import FaceTrack
from stcvq.inference.enhance import (
    StreamConfig,
    WholeFrame,
    blend_with_input,
    enhance_file,
    output_pix_fmt,
    paste_squares,
    restore_stream,
    restore_tracks,
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


class TemporalMean(Identity):
    """Every frame becomes its window's mean over time: what a temporal model does at a cut."""

    def restore(self, clips):
        self.calls.append(clips.shape[0])
        return clips.mean(dim=2, keepdim=True).expand_as(clips).clone()


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


@pytest.mark.parametrize("pix_fmt, width, written", [
    ("bgr0", 32, "yuv444p"), ("gbrp", 32, "yuv444p"), ("rgb24", 32, "yuv444p"), ("yuv444p", 32, "yuv444p"),
    ("yuv422p", 32, "yuv422p"), ("yuv422p", 33, "yuv444p"), ("yuvj420p", 32, "yuv420p"), ("gray", 32, "yuv420p"),
])
def test_output_pix_fmt_keeps_the_chroma_resolution(pix_fmt, width, written):
    info = video.VideoInfo("x", width, 28, 25.0, "25/1", 3, 0.12, "ffv1", pix_fmt, False)
    assert output_pix_fmt(info) == written


def _shots_of(first_frames, num_frames):
    bounds = [*first_frames, num_frames]
    return list(zip(bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("cuts", [[0, 13], [0, 5, 9, 30], [0, 3]])
def test_stream_never_blends_across_a_shot_cut(cuts):
    """A temporal model over two flat shots: every output frame is its own shot's level, and
    every window run lies inside one shot."""
    num_frames = 37
    levels = [40 + 50 * k for k in range(len(cuts))]
    shot = np.searchsorted(cuts, np.arange(num_frames), side="right") - 1
    frames = [np.full((32, 32, 3), levels[s], np.uint8) for s in shot]
    windows = []
    out = list(restore_stream(iter(frames), TemporalMean(), _ident, _back, StreamConfig(overlap=3),
                              shot_starts=set(cuts), windows=windows))
    assert len(out) == num_frames
    for index, frame in enumerate(out):
        assert np.all(frame == levels[shot[index]]), index
    spans = _shots_of(cuts, num_frames)
    assert windows and all(any(a <= s and e <= b for a, b in spans) for s, e in windows), windows
    covered = sorted({i for s, e in windows for i in range(s, e)})
    assert covered == list(range(num_frames))


def test_paste_squares_leaves_every_other_pixel_alone_and_blends_overlaps():
    frame = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    red, blue = np.full((16, 16, 3), (255, 0, 0), np.uint8), np.full((16, 16, 3), (0, 0, 255), np.uint8)
    # two overlapping 30 px squares, one reaching 10 px past the right edge
    a, b = (10, 10, 30), (60, 20, 30)
    c = (20, 15, 30)  # overlaps a
    out = paste_squares(frame, [(a, red), (b, blue), (c, blue)], feather=0.1)
    inside = np.zeros(frame.shape[:2], bool)
    for x0, y0, side in (a, b, c):
        inside[max(y0, 0) : y0 + side, max(x0, 0) : x0 + side] = True
    np.testing.assert_array_equal(out[~inside], frame[~inside])  # untouched, bit for bit
    assert tuple(out[25, 15]) == (255, 0, 0)  # only a, its mask 1 there
    assert tuple(out[35, 75]) == (0, 0, 255)  # b's inside part, up to the frame edge
    assert tuple(out[28, 30]) == (128, 0, 128)  # a and c both at mask 1: their mean
    assert paste_squares(frame, [((100, 100, 20), red)], 0.1) is frame  # wholly outside: nothing to do


def test_blend_with_input():
    a, b = np.full((2, 2, 3), 200, np.uint8), np.full((2, 2, 3), 100, np.uint8)
    assert blend_with_input(a, b, 0.0) is a
    assert np.all(blend_with_input(a, b, 0.25) == 175) and np.all(blend_with_input(a, b, 1.0) == 100)


def _track(shot, number, first, end, x0, y0, side):
    n = end - first
    return FaceTrack(shot, number, first, end, np.tile(np.array([x0, y0, side], np.int32), (n, 1)), np.ones(n, bool))


class Brighten(Identity):
    def restore(self, clips):
        self.calls.append(clips.shape[0])
        return (clips + 0.2).clamp(0, 1)


def test_restore_tracks_touches_only_the_tracked_squares_within_their_frames():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 200, (48, 64, 3), dtype=np.uint8) for _ in range(30)]
    tracks = [_track(0, 0, 2, 14, 4, 4, 20), _track(0, 1, 5, 9, 30, 10, 24), _track(1, 2, 14, 30, 50, 30, 24)]
    streams = {}
    out = list(restore_tracks(iter(frames), Brighten(), tracks, StreamConfig(overlap=2), streams=streams))
    assert len(out) == len(frames)
    for index, (got, frame) in enumerate(zip(out, frames)):
        on = [t for t in tracks if t.first <= index < t.end]
        inside = np.zeros(frame.shape[:2], bool)
        for t in on:
            x0, y0, side = t.squares[index - t.first]
            inside[y0 : y0 + side, x0 : x0 + side] = True
        np.testing.assert_array_equal(got[~inside], frame[~inside])
        if on:
            assert got[inside].astype(int).mean() > frame[inside].astype(int).mean() + 20
    for number, track in enumerate(tracks):
        windows = streams[number].windows
        assert all(track.first <= s and e <= track.end for s, e in windows), (number, windows)
        assert streams[number].count - streams[number].first == track.end - track.first


def test_restore_tracks_holds_a_bounded_number_of_frames():
    """A 300-frame track: frames are yielded at most a window (and a batch of strides) behind."""
    length, overlap, batch = 8, 2, 2
    frames = (np.full((24, 24, 3), i % 256, np.uint8) for i in range(300))
    read = []

    def counted():
        for frame in frames:
            read.append(1)
            yield frame

    lag = 0
    for written, _ in enumerate(restore_tracks(counted(), Identity(length, 32), [_track(0, 0, 0, 300, 2, 2, 20)],
                                               StreamConfig(overlap=overlap, batch_size=batch)), start=1):
        lag = max(lag, len(read) - written)
    assert written == 300
    assert lag <= length + (batch - 1) * (length - overlap)


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
