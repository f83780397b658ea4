"""Image-sequence folders read as videos: probe, streaming decode, sidecar rates, bad folders, enhance."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from stcvq.media import video


def dump_frames(
    src: Path, folder: Path, *, stop: int | None = None, suffix: str = ".png", fps: str | None = None
) -> Path:
    """Frames of ``src`` as ``frame0.png, frame1.png, ...`` (unpadded: only a natural sort orders them)."""
    folder.mkdir(parents=True)
    for i, frame in enumerate(video.read_frames(src, stop=stop)):
        cv2.imwrite(str(folder / f"frame{i}{suffix}"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if fps is not None:
        (folder / video.FPS_SIDECAR).write_text(fps + "\n")
    return folder


def test_png_folder_probes_and_decodes_like_the_video(tmp_path, carphone_path):
    folder = dump_frames(carphone_path, tmp_path / "carphone", fps="30000/1001")
    (folder / "notes.txt").write_text("not a frame")
    assert video.is_frame_folder(folder) and not video.is_frame_folder(tmp_path / "missing")
    info, original = video.probe(folder, count_frames=True), video.probe(carphone_path, count_frames=True)
    assert (info.width, info.height, info.num_frames, info.fps_fraction) == (176, 144, 120, "30000/1001")
    assert (info.width, info.height, info.num_frames, info.fps_fraction) == (
        original.width, original.height, original.num_frames, original.fps_fraction)
    assert info.duration == pytest.approx(original.duration, abs=1 / original.fps) and not info.has_audio
    assert np.array_equal(video.read_video(folder), video.read_video(carphone_path))  # PNG is lossless, order kept
    part = video.read_video(folder, start=3, stop=50, step=7)
    assert np.array_equal(part, video.read_video(carphone_path, start=3, stop=50, step=7)) and len(part) == 7
    gray = next(video.read_frames(folder, gray=True))
    assert gray.shape == (144, 176) and gray.dtype == np.uint8
    indices, frames = video.read_sampled(folder, 4)
    assert indices == [0, 40, 79, 119] and len(frames) == 4


def test_natural_order_and_json_sidecar(tmp_path, carphone_path):
    folder = dump_frames(carphone_path, tmp_path / "jpg", stop=12, suffix=".jpg")
    assert [p.name for p in video.frame_files(folder)][:3] == ["frame0.jpg", "frame1.jpg", "frame2.jpg"]
    assert video.frame_files(folder)[-1].name == "frame11.jpg"
    (folder / "meta.json").write_text(json.dumps({"source": "carphone", "fps": 12.5}))
    info = video.probe(folder)
    assert (info.fps_fraction, info.num_frames, info.codec) == ("25/2", 12, "mjpeg")
    (folder / video.FPS_SIDECAR).write_text("24\n")  # fps.txt wins over the JSON
    assert video.probe(folder).fps_fraction == "24/1"


def _one_line_error(path: Path) -> str:
    with pytest.raises(video.VideoError) as err:
        video.probe(path, count_frames=True)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_frame_folders_give_one_line_naming_the_folder(tmp_path, carphone_path):
    mixed = dump_frames(carphone_path, tmp_path / "mixed", stop=4, fps="25")
    cv2.imwrite(str(mixed / "frame4.png"), np.zeros((72, 88, 3), np.uint8))
    message = _one_line_error(mixed)
    assert message.startswith(f"{mixed}: unreadable: frames differ in size") and "frame4.png is 88x72" in message
    with pytest.raises(video.VideoError, match="differ in size"):  # streaming decode checks as well
        list(video.read_frames(mixed))

    with_video = dump_frames(carphone_path, tmp_path / "with_video", stop=2, fps="25")
    (with_video / "clip.mp4").write_bytes(carphone_path.read_bytes())
    (with_video / "sub").mkdir()
    assert not video.is_frame_folder(with_video)  # a folder of files: ingest lists each of them
    assert _one_line_error(with_video) == (
        f"{with_video}: unreadable: holds more than frames and .txt/.json sidecars: clip.mp4, sub"
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / video.FPS_SIDECAR).write_text("25\n")
    assert _one_line_error(empty) == f"{empty}: unreadable: no PNG/JPG frames in the folder"

    no_rate = dump_frames(carphone_path, tmp_path / "no_rate", stop=2)
    assert _one_line_error(no_rate).startswith(
        f"{no_rate}: unreadable: no frame rate; write it to {no_rate / 'fps.txt'}"
    )
    (no_rate / video.FPS_SIDECAR).write_text("fast\n")
    assert _one_line_error(no_rate).startswith(f"{no_rate / 'fps.txt'}: not a frame rate: 'fast'")

    corrupt = dump_frames(carphone_path, tmp_path / "corrupt", stop=3, fps="25")
    (corrupt / "frame1.png").write_bytes(b"\x89PNG not really")
    message = _one_line_error(corrupt)
    assert message.startswith(f"{corrupt}: unreadable: frame frame1.png")


def test_enhance_cli_takes_a_frame_folder_as_one_video(tmp_path, carphone_path):
    import torch

    from stcvq.cli import main
    from stcvq.nn.restorer import Stage2Config, Stage2Model

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    Stage2Model(Stage2Config.profile("tiny")).save_pretrained(model_dir)
    folder = dump_frames(carphone_path, tmp_path / "frames", stop=10, fps="30000/1001")
    out = tmp_path / "out.mp4"
    assert main(["enhance", str(folder), "-o", str(out),
                 "--task", "bfvr", "--model", str(model_dir), "--device", "cpu"]) == 0
    info = video.probe(out, count_frames=True)
    assert (info.num_frames, info.width, info.height, info.fps_fraction) == (10, 176, 144, "30000/1001")
