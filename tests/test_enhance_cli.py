"""`stcvq enhance` end to end on real face video (carphone and its x4 upscale), with a
randomly initialised embedded-default Stage II model saved to a tmp folder: face tracks,
face-crop, whole-frame, the default choice, folder mode, variable frame rate, the comparison
video, 4:4:4 inputs, and one-line errors. Multi-shot footage: tests/test_enhance_footage.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from stcvq.cli import _enhance_jobs, embedded_default_notice, main
from stcvq.inference.enhance import StreamConfig, enhance_file
from stcvq.media import video
from stcvq.nn.restorer import Stage2Config, Stage2Model

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 16  # carphone trimmed: 3 windows of the embedded default's 8 frames, overlap 4
# The face-crop square of carphone's first 16 frames, (x0, y0, side): the box around the
# smoothed squares (dlib's face boxes enlarged x1.3) of the man's face track.
CARPHONE_FACE = (51, 30, 70)


def _ffmpeg(*args: str) -> None:
    subprocess.run([video.ffmpeg_exe(), "-y", "-loglevel", "error", "-nostdin", *args], check=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, two spinning threads are 4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clips(tmp_path_factory, carphone_path) -> dict[str, Path]:
    """carphone's first 16 frames with a sine audio track, its x4 upscale, its face square
    (what the crop stage writes), and an irregularly timed (VFR) cut of it."""
    folder = tmp_path_factory.mktemp("clips")
    sine = ["-f", "lavfi", "-i", "sine=frequency=440:duration=2.2"]
    h264 = ["-c:v", "libx264", "-crf", "16", "-preset", "veryfast", "-threads", "1", "-c:a", "aac", "-shortest"]
    out = {name: folder / f"{name}.mp4" for name in ("carphone", "carphone_x4", "face", "vfr")}
    _ffmpeg("-i", str(carphone_path), *sine, "-frames:v", str(FRAMES), *h264, str(out["carphone"]))
    _ffmpeg("-i", str(out["carphone"]), "-vf", "scale=704:576:flags=lanczos", "-c:a", "copy",
            "-c:v", "libx264", "-crf", "16", "-preset", "veryfast", "-threads", "1", str(out["carphone_x4"]))
    # a user's face crop: 320^2 of the x4 upscale around the face, whose square covers 57-58% of it
    _ffmpeg("-i", str(out["carphone_x4"]), "-vf", "crop=320:320:184:100", "-c:a", "copy",
            "-c:v", "libx264", "-crf", "16", "-threads", "1", str(out["face"]))
    # 3 of every 10 frames (gaps of 1/30 s and 8/30 s), timestamps kept, audio over the whole span
    _ffmpeg("-i", str(carphone_path), *sine, "-vf", r"select='lt(mod(n\,10)\,3)',scale=176:144", "-fps_mode", "vfr",
            "-frames:v", "18", "-c:v", "libx264", "-crf", "16", "-threads", "1", "-c:a", "aac", str(out["vfr"]))
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "stage2-bfvr"
    Stage2Model(Stage2Config.profile("embedded", "bfvr")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(model_dir) -> Stage2Model:
    return Stage2Model.from_pretrained(model_dir)


def _frames(path: Path) -> np.ndarray:
    return video.read_video(path).astype(np.float64)


def _times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(frame.pts * stream.time_base) for frame in container.decode(video=0)]


def _audio_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(stream.duration * stream.time_base)


def _assert_kept(src: Path, dst: Path) -> None:
    a, b = video.probe(src, count_frames=True), video.probe(dst, count_frames=True)
    assert (b.num_frames, b.width, b.height, b.fps_fraction, b.has_audio) == (
        a.num_frames, a.width, a.height, a.fps_fraction, True
    )


@pytest.mark.parametrize("name, scale", [("carphone", 1), ("carphone_x4", 4)])
def test_face_crop_enhances_the_real_face_and_leaves_the_rest(tmp_path, clips, model, name, scale):
    src, dst = clips[name], tmp_path / "out.mp4"
    report = enhance_file(src, dst, model, StreamConfig(framing="face"), progress=False)
    assert report.framing == "face" and "face-crop (asked)" in report.framing_reason
    _assert_kept(src, dst)
    fx0, fy0, fside = report.face_square
    # carphone's face, found at x4 too: the same centre within 2 px of x1, the side within 10%
    # (detection runs on a 640 px copy, where dlib's boxes come out a little different)
    x0, y0, side = (v * scale for v in CARPHONE_FACE)
    assert abs(fx0 + fside / 2 - x0 - side / 2) <= 2 * scale and abs(fy0 + fside / 2 - y0 - side / 2) <= 2 * scale
    assert abs(fside - side) <= 0.1 * side
    before, after = _frames(src), _frames(dst)
    diff = np.abs(after - before).mean(axis=(0, 3))  # (H, W)
    # what writing the untouched frames at the same crf changes: the floor outside the face
    untouched = video.write_video(tmp_path / "untouched.mp4", video.read_frames(src), 25, crf=StreamConfig().crf)
    floor = np.abs(_frames(untouched) - before).mean(axis=(0, 3))
    inside = np.zeros(diff.shape, bool)
    inside[fy0 + fside // 4 : fy0 + fside * 3 // 4, fx0 + fside // 4 : fx0 + fside * 3 // 4] = True
    outside = np.ones(diff.shape, bool)
    margin = 8 * scale  # x264 blocks across the square's edge
    outside[max(0, fy0 - margin) : fy0 + fside + margin, max(0, fx0 - margin) : fx0 + fside + margin] = False
    assert diff[outside].mean() < floor[outside].mean() + 0.25  # the scene around the face: re-encoded, not touched
    assert diff[inside].mean() > 10  # the face went through the (random) model


@pytest.mark.parametrize("name", ["carphone", "carphone_x4"])
def test_whole_frame_runs_the_model_on_every_pixel(tmp_path, clips, model, name):
    src, dst = clips[name], tmp_path / "out.mp4"
    report = enhance_file(src, dst, model, StreamConfig(framing="whole"), progress=False)
    assert report.framing == "whole" and report.framing_reason == "whole-frame (asked)"
    _assert_kept(src, dst)
    diff = np.abs(_frames(dst) - _frames(src)).mean(axis=(0, 3))
    assert diff[:20, :20].mean() > 10 and diff[-20:, -20:].mean() > 10  # the corners changed too


def test_default_picks_tracks_for_a_scene_and_whole_frame_for_a_face_crop(tmp_path, clips, model, caplog):
    caplog.set_level(logging.INFO, logger="stcvq")
    scene = enhance_file(clips["carphone"], tmp_path / "scene.mp4", model, progress=False)
    assert scene.framing == "tracks"
    assert scene.framing_reason.startswith(f"tracks (auto: 1 face track in 1 of 1 shot, on {FRAMES} of {FRAMES} frames")
    assert scene.shots == [[0, FRAMES]]
    assert [(t["shot"], t["first"], t["end"], t["frames_restored"]) for t in scene.tracks] == [(0, 0, FRAMES, FRAMES)]
    crop = enhance_file(clips["face"], tmp_path / "crop.mp4", model, progress=False)
    assert crop.framing == "whole" and "already a face crop" in crop.framing_reason
    assert f"at least 50% of the frame on {FRAMES} of {FRAMES} frames: already a face crop" in crop.framing_reason
    logged = [r.getMessage() for r in caplog.records if r.name == "stcvq.inference.enhance"]
    assert f"{clips['carphone']}: {scene.framing_reason}" in logged
    assert f"{clips['face']}: {crop.framing_reason}" in logged


def test_default_without_a_face_is_whole_frame_and_face_crop_is_an_error(tmp_path, bunny_path, model):
    src = video.write_video(tmp_path / "bunny.mp4", (f[::4, ::4] for f in video.read_frames(bunny_path, stop=10)), 25)
    report = enhance_file(src, tmp_path / "auto.mp4", model, progress=False)
    assert report.framing == "whole"
    assert report.framing_reason == "whole-frame (auto: no face of at least 40 px (--min-face) in 10 frames)"
    for framing, option in (("face", "--face-crop"), ("tracks", "--tracks")):
        with pytest.raises(video.VideoError, match=rf"bunny\.mp4: {option} found no face of at least 40 px"):
            enhance_file(src, tmp_path / "face.mp4", model, StreamConfig(framing=framing), progress=False)
    assert not (tmp_path / "face.mp4").exists()


def test_variable_frame_rate_keeps_every_timestamp_and_the_audio(tmp_path, clips, model):
    src, dst = clips["vfr"], tmp_path / "out.mp4"
    times_in = _times(src)
    assert len(set(np.round(np.diff(times_in), 3))) == 2  # really irregular: 1/30 s and 8/30 s gaps
    report = enhance_file(src, dst, model, progress=False)
    assert report.timing == "variable" and report.frames == len(times_in)
    times_out = _times(dst)
    frame = min(np.diff(times_in))
    assert len(times_out) == len(times_in)
    assert np.abs(np.array(times_out) - times_in).max() < frame / 2
    assert abs(_audio_seconds(dst) - _audio_seconds(src)) < frame


def test_evenly_spaced_frames_keep_their_true_rate(tmp_path, carphone_path, model):
    """Every 3rd frame kept with -fps_mode vfr: evenly spaced at 10 fps, while the container's
    average rate says otherwise; the output runs at 10 fps and ends where the input ends."""
    src, dst = tmp_path / "third.mp4", tmp_path / "out.mp4"
    _ffmpeg("-i", str(carphone_path), "-vf", r"select='not(mod(n\,3))'", "-fps_mode", "vfr", "-frames:v", "12",
            "-c:v", "libx264", "-threads", "1", str(src))
    report = enhance_file(src, dst, model, StreamConfig(framing="whole"), progress=False)
    assert report.timing == "constant" and Fraction(report.fps) == Fraction(10000, 1001)
    assert abs(_times(dst)[-1] - _times(src)[-1]) < 1e-3


def test_frame_times_regular_rate():
    steady = video.FrameTimes(tuple(range(0, 10 * 1001, 1001)), Fraction(1, 30000))
    assert steady.regular_rate() == Fraction(30000, 1001)
    millis = video.FrameTimes(tuple(int(i * 1001 / 30) for i in range(30)), Fraction(1, 1000))  # steps of 33 and 34
    assert millis.regular_rate(Fraction(30000, 1001)) == Fraction(30000, 1001)  # the declared rate fits
    assert millis.regular_rate(Fraction(25)) == Fraction(29000, 967)  # it does not: as measured
    assert video.FrameTimes((0, 1, 2, 10, 11), Fraction(1, 30)).regular_rate() is None
    assert video.FrameTimes((0,), Fraction(1, 30)).regular_rate() is None


def test_folder_with_one_bad_file_writes_the_good_ones_and_says_so(tmp_path, clips, model_dir):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("carphone", "carphone_x4"):
        (folder / f"{name}.mp4").symlink_to(clips[name])
    (folder / "broken.mp4").write_bytes(b"not a video" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "stcvq.cli", "enhance", str(folder), "-o", str(out),
         "--task", "bfvr", "--model", str(model_dir)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 2, proc.stderr
    assert f"{folder / 'broken.mp4'}: unreadable" in errors[0]
    assert errors[1].endswith(f"1 of 3 videos failed: {folder / 'broken.mp4'}")
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(Path(r["output"]).name for r in reports) == ["carphone.mp4", "carphone_x4.mp4"]
    assert all(r["framing"] == "tracks" for r in reports)
    assert sorted(p.name for p in out.iterdir()) == ["carphone.mp4", "carphone_x4.mp4"]  # no partial file left
    for name in ("carphone", "carphone_x4"):
        _assert_kept(clips[name], out / f"{name}.mp4")
    notice = [line for line in proc.stderr.splitlines() if "embedded default" in line]
    assert len(notice) == 1 and "stcvq import-reference --download bfvr" in notice[0]
    assert '"Using the published models"' in notice[0]


def test_folder_outputs_keep_names_where_the_container_holds_h264(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.webm", "b.MKV", "c.mp4", "notes.txt"):
        (folder / name).write_bytes(b"")
    jobs, problem = _enhance_jobs(folder, tmp_path / "out")
    assert problem is None
    assert [(s.name, d.name) for s, d in jobs] == [("a.webm", "a.mp4"), ("b.MKV", "b.MKV"), ("c.mp4", "c.mp4")]
    (folder / "a.mp4").write_bytes(b"")
    _, problem = _enhance_jobs(folder, tmp_path / "out")
    assert problem == f"{folder}: several inputs would be written as a.mp4; rename them"


def test_embedded_default_notice_only_for_embedded_scale_models(model, model_dir):
    assert "64x64" in embedded_default_notice(model, model_dir)
    larger = Stage2Model(Stage2Config.profile("tiny", size=128))
    assert embedded_default_notice(larger, model_dir) is None


@pytest.mark.parametrize("options, named", [
    (["--overlap", "-1"], "argument --overlap: must be >= 0, got -1"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--crf", "99"], "argument --crf: must be in 0..51, got 99"),
    (["--crf", "-5"], "argument --crf: must be in 0..51, got -5"),
    (["--fidelity", "1.5"], "argument --fidelity: must be in 0..1, got 1.5"),
    (["--fidelity", "-0.1"], "argument --fidelity: must be in 0..1, got -0.1"),
    (["--fidelity", "nan"], "argument --fidelity: must be in 0..1, got nan"),
    (["--fidelity", "high"], "argument --fidelity: expected a number in 0..1, got 'high'"),
    (["--blend-input", "2"], "argument --blend-input: must be in 0..1, got 2"),
    (["--max-faces", "0"], "argument --max-faces: must be >= 1, got 0"),
    (["--min-face", "0"], "argument --min-face: must be >= 1, got 0"),
    (["--compare", "{tmp}/side.txt"], "--compare {tmp}/side.txt: cannot write H.264 video as .txt"),
    (["-o", "{tmp}/out.txt"], "-o {tmp}/out.txt: cannot write H.264 video as .txt"),
    (["-o", "{tmp}/out"], "-o {tmp}/out: cannot write H.264 video as a file without extension"),
])
def test_bad_options_are_one_line_before_any_work(tmp_path, clips, capsys, options, named):
    options = [o.format(tmp=tmp_path) for o in options]
    argv = ["enhance", str(clips["carphone"]), "--task", "bfvr", "--model", str(tmp_path / "no-model")]
    if "-o" not in options:
        argv += ["-o", str(tmp_path / "out.mp4")]
    try:
        status = main(argv + options)
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named.format(tmp=tmp_path) in err  # the model folder is never looked at
    assert list(tmp_path.iterdir()) == []


def test_existing_file_as_folder_output_is_one_error_before_any_work(tmp_path, clips, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("carphone", "face"):
        (folder / f"{name}.mp4").symlink_to(clips[name])
    target = tmp_path / "out.mp4"
    target.write_bytes(b"keep me")
    status = main(["enhance", str(folder), "-o", str(target), "--task", "bfvr", "--model", str(tmp_path / "no-model")])
    assert status == 2
    err = capsys.readouterr().err
    assert err == (
        f"stcvq enhance: error: -o {target}: exists and is not a folder (a folder input needs an output folder)\n"
    )
    assert target.read_bytes() == b"keep me"


def test_a_broken_model_folder_is_one_line(tmp_path, clips, model_dir):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    config["size"] = 65  # not a multiple of Stage I's spatial factor
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_:
        main(["enhance", str(clips["carphone"]), "-o", str(tmp_path / "out.mp4"),
              "--task", "bfvr", "--model", str(broken)])
    message = str(exit_.value.code)
    assert message.startswith(f"{broken}: not a usable Stage II model: ") and "size 65" in message
    assert "\n" not in message and not (tmp_path / "out.mp4").exists()


def test_an_output_ffmpeg_cannot_mux_is_one_line_naming_it(tmp_path, clips, model):
    dst = tmp_path / "out.txt"
    with pytest.raises(video.VideoError) as err:
        enhance_file(clips["carphone"], dst, model, StreamConfig(framing="whole"), progress=False)
    message = str(err.value)
    assert message.startswith(f"{dst}: ffmpeg failed: ") and "\n" not in message
    assert f".{dst.name}." not in message  # the hidden temp file is not what the user named
    assert list(tmp_path.iterdir()) == []


def test_faces_below_the_minimum_are_one_line_when_asked_and_whole_frame_in_auto(tmp_path, clips, model_dir, caplog):
    argv = ["enhance", str(clips["carphone"]), "--task", "bfvr", "--model", str(model_dir), "--min-face", "200"]
    for option in ("--tracks", "--face-crop"):
        caplog.clear()
        assert main([*argv, "-o", str(tmp_path / "asked.mp4"), option]) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors[0] == (f"{clips['carphone']}: {option} found no face of at least 200 px (--min-face) in "
                             f"{FRAMES} frames; --whole-frame enhances the whole frame")
        assert len(errors) == 2 and errors[1].startswith("1 of 1 videos failed")
        assert not (tmp_path / "asked.mp4").exists()
    caplog.clear()
    caplog.set_level(logging.INFO, logger="stcvq")
    assert main([*argv, "-o", str(tmp_path / "auto.mp4")]) == 0
    reasons = [r.getMessage() for r in caplog.records if r.name == "stcvq.inference.enhance"]
    assert f"{clips['carphone']}: whole-frame (auto: no face of at least 200 px (--min-face) in {FRAMES} frames)" \
        in reasons


def test_compare_writes_input_and_output_side_by_side(tmp_path, clips, model, capsys):
    src, dst, side = clips["carphone"], tmp_path / "out.mp4", tmp_path / "side.mp4"
    report = enhance_file(src, dst, model, compare=side, progress=False)
    assert report.compare == str(side)
    a, b = video.probe(src, count_frames=True), video.probe(side, count_frames=True)
    assert (b.width, b.height, b.num_frames, b.fps_fraction) == (2 * a.width, a.height, a.num_frames, a.fps_fraction)
    pairs, before, after = _frames(side), _frames(src), _frames(dst)
    x0, y0, s = CARPHONE_FACE  # inside the tracked face, away from the drawn square
    inner = (slice(None), slice(y0 + 10, y0 + s - 10), slice(x0 + 10, x0 + s - 10))
    left, right = pairs[:, :, : a.width][inner], pairs[:, :, a.width :][inner]
    assert np.abs(right - after[inner]).mean() < 0.5 * np.abs(right - before[inner]).mean()  # the output
    assert np.abs(left - before[inner]).mean() < 0.5 * np.abs(left - after[inner]).mean()  # the input
    with pytest.raises(FileExistsError, match="side.mp4: exists"):
        enhance_file(src, tmp_path / "again.mp4", model, compare=side, progress=False)


def test_rgb_input_keeps_its_colour_resolution(tmp_path, clips, model):
    """A lossless FFV1 bgr0 input is written 4:4:4: one-pixel red | green stripes beside the face
    keep their colours, which 4:2:0 (one chroma sample per 2x2 pixels) averages away."""
    import cv2

    def chroma(frames):
        return np.stack([cv2.cvtColor(f.astype(np.uint8), cv2.COLOR_RGB2YCrCb)[..., 1:] for f in frames]).astype(int)

    frames = video.read_video(clips["carphone"])
    stripes = (slice(None), slice(100, 140), slice(2, 42))  # below-left of the face square
    frames[stripes] = 0
    frames[:, 100:140, 2:42:2, 0] = 230
    frames[:, 100:140, 3:42:2, 1] = 200
    src = video.write_video(tmp_path / "rgb.mkv", frames, "30000/1001", codec="ffv1", pix_fmt="bgr0")
    assert video.probe(src).pix_fmt == "bgr0"
    dst = tmp_path / "out.mp4"
    report = enhance_file(src, dst, model, progress=False)
    assert video.probe(dst).pix_fmt == "yuv444p"
    subsampled = video.write_video(tmp_path / "420.mp4", frames, "30000/1001", crf=StreamConfig().crf)
    assert report.framing == "tracks"
    error = np.abs(chroma(_frames(dst)) - chroma(frames))[stripes].mean()
    error_420 = np.abs(chroma(_frames(subsampled)) - chroma(frames))[stripes].mean()
    assert error < 3 and error_420 > 30, (error, error_420)  # measured: 0.95 and 54 (of 255)


def test_fidelity_reaches_the_model_and_changes_only_the_faces(tmp_path, clips, model):
    src = clips["carphone"]
    codes = enhance_file(src, tmp_path / "w0.mp4", model, progress=False)
    latent = enhance_file(src, tmp_path / "w1.mp4", model, StreamConfig(fidelity=1.0), progress=False)
    assert latent.fidelity == 1.0 and latent.tracks == codes.tracks
    difference = np.abs(_frames(tmp_path / "w1.mp4") - _frames(tmp_path / "w0.mp4")).mean(axis=(0, 3))
    assert difference[40:100, 60:110].mean() > 5  # the face: another latent decoded
    # far from it the same input pixels: only x264's rate control differs (a frame's quantiser
    # follows its complexity, which the face's content changes)
    assert difference[:, :20].mean() < 1.5 and difference[-15:].mean() < 1.5


def test_help_states_the_trackers_defaults():
    from stcvq.cli import build_parser
    from stcvq.faces.tracks import TrackConfig

    enhance = build_parser()._subparsers._group_actions[0].choices["enhance"]
    helps = {a.dest: a.help for a in enhance._actions}
    assert f"(default {TrackConfig().min_face})" in helps["min_face"]
    assert f"(default {TrackConfig().max_faces})" in helps["max_faces"]
