"""stcvq.evaluation.score: input vs output scoring of a test split, efficiency, temporal profiles, frame grids."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from _dvc_stages import stage_argv

from stcvq.config import ConfigError, from_dict
from stcvq.evaluation.metrics import load_models
from stcvq.evaluation.metrics.fidelity import PSNR_CAP_DB
from stcvq.evaluation.score import (
    EvaluateConfig,
    evaluate_task,
    frame_grid,
    profile_comparison,
    temporal_profile,
    to_uint8_video,
    write_png,
)
from stcvq.media.frames import frames_to_tensor
from stcvq.media.video import read_video
from stcvq.nn.restorer import Stage2Config, Stage2Model


class Identity:
    """A ClipRestorer that returns its input: the output must score exactly like the input."""

    def __init__(self, clip_length: int = 8, size: int = 32):
        self.clip_length, self.size = clip_length, size

    def restore(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.clone()


@pytest.fixture(scope="module")
def metric_models():
    return load_models()


@pytest.fixture(scope="module")
def carphone(request) -> np.ndarray:
    return read_video(request.getfixturevalue("carphone_path"), stop=32)


def _clip(video: np.ndarray, start: int, frames: int, size: int) -> torch.Tensor:
    """(3, T, size, size) float in [0, 1] from a (T, H, W, 3) uint8 video (centre square, resized)."""
    h, w = video.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crops = [cv2.resize(f[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)
             for f in video[start:start + frames]]
    return frames_to_tensor(crops)


def _flicker(clip: torch.Tensor, seed: int) -> torch.Tensor:
    gains = torch.from_numpy(np.random.default_rng(seed).uniform(0.6, 1.4, clip.shape[1])).float()
    return (clip * gains.view(1, -1, 1, 1)).clamp(0, 1)


def _samples(carphone, count: int = 2, frames: int = 8, size: int = 32, degrade: bool = True):
    out = []
    for i in range(count):
        hq = _clip(carphone, 8 * i, frames, size)
        out.append({"hq": hq, "lq": _flicker(hq, i) if degrade else hq.clone(), "meta": {"key": f"carphone-{i}"}})
    return out


def _check_report(report: dict) -> None:
    json.dumps(report, allow_nan=False)
    assert set(report["input"]) == set(report["output"])
    for side in ("input", "output", "ground_truth"):
        for name, value in report[side].items():
            if value is None:
                assert report["null_reasons"][side][name], f"{side}.{name} is null without a reason"
            else:
                assert np.isfinite(value) and name not in report["null_reasons"][side]


def test_identity_model_scores_output_like_input(carphone, metric_models):
    report = evaluate_task(Identity(), _samples(carphone), metric_models, task="deflicker", faces=False)
    _check_report(report)
    assert report["clips"] == 2 and report["skipped"] == []
    assert {"psnr", "ssim", "lpips", "flow_score", "warping_error", "flicker_index", "fvd"} <= set(report["input"])
    for name, value in report["input"].items():
        assert report["output"][name] == value, name
    assert report["input"]["psnr"] < 40  # the flicker really degraded the input
    assert report["output"]["lpips"] is None and "LPIPS" in report["null_reasons"]["output"]["lpips"]
    assert report["output"]["fvd"] is None and "I3D" in report["null_reasons"]["output"]["fvd"]
    assert "DIS" in report["backends"]["flow"]
    assert [c["key"] for c in report["per_clip"]] == ["carphone-0", "carphone-1"]


def test_clean_input_gives_the_ideal_scores(carphone, metric_models):
    """Identity on LQ == HQ: PSNR at its cap, SSIM 1, warping error and flicker equal to the GT's own."""
    samples = _samples(carphone, degrade=False)
    report = evaluate_task(Identity(), samples, metric_models, task="bfvr", faces=False)
    gt = evaluate_task(Identity(), [{**s, "lq": s["hq"]} for s in samples], metric_models, task="bfvr", faces=False)
    assert report["output"]["psnr"] == PSNR_CAP_DB
    assert report["output"]["ssim"] == pytest.approx(1.0)
    assert report["output"]["flicker_index"] == gt["input"]["flicker_index"]
    assert report["ground_truth"]["flicker_index"] == gt["input"]["flicker_index"]
    assert report["ground_truth"]["warping_error"] == report["output"]["warping_error"]
    assert set(report["ground_truth"]) == {"flow_score", "warping_error", "flicker_index"}
    flickered = evaluate_task(Identity(), _samples(carphone), metric_models, task="bfvr", faces=False)
    assert flickered["input"]["flicker_index"] > 2 * report["output"]["flicker_index"]


def test_tiny_stage2_model_and_efficiency(carphone, metric_models):
    torch.manual_seed(0)
    model = Stage2Model(Stage2Config.profile("tiny")).eval()  # 4 x 16^2 clips
    samples = _samples(carphone, count=3, frames=4, size=16)
    report = evaluate_task(model, samples, metric_models, task="bfvr", faces=False)
    _check_report(report)
    assert report["clips"] == 3
    assert report["output"]["psnr"] != report["input"]["psnr"]  # the model really ran
    eff = report["efficiency"]
    assert eff["seconds_per_clip"] > 0 and eff["frames_per_second"] > 0 and eff["clips_timed"] == 2
    assert eff["clip_frames"] == 4 and eff["device"].startswith("cpu")
    assert eff["seconds_per_24_frames"] == pytest.approx(24 / eff["frames_per_second"])


def test_bad_clip_is_recorded_and_skipped(carphone, metric_models):
    samples = _samples(carphone, count=2)
    samples.insert(1, {"hq": _clip(carphone, 0, 8, 24), "lq": _clip(carphone, 0, 8, 24), "meta": {"key": "wrong-size"}})
    report = evaluate_task(Identity(), samples, metric_models, task="bfvr", faces=False)
    assert report["clips"] == 2
    assert report["skipped"][0]["key"] == "wrong-size" and "24x24" in report["skipped"][0]["error"]
    assert evaluate_task(Identity(), samples, metric_models, task="bfvr", faces=False, max_clips=1)["clips"] == 1


def test_identity_metrics_with_faces(carphone, metric_models):
    hq = _clip(carphone, 0, 4, 96)
    samples = [{"hq": hq, "lq": hq.clone(), "meta": {}}]
    report = evaluate_task(Identity(4, 96), samples, metric_models, task="bfvr", faces=True)
    _check_report(report)
    assert {"akd", "ids", "face_cons"} <= set(report["output"])
    assert report["output"]["ids"] == pytest.approx(1.0)  # identical videos: identical descriptors
    assert report["output"]["akd"] == pytest.approx(0.0)
    assert report["backends"]["face_descriptor"].startswith("dlib")


def test_temporal_profile_and_frame_grid(tmp_path):
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (6, 20, 30, 3), dtype=np.uint8) for _ in range(3)]
    profile = temporal_profile(videos[0], 7)
    assert profile.shape == (20, 6, 3) and profile.dtype == np.uint8
    assert np.array_equal(profile[:, 2], videos[0][2, :, 7])
    assert np.array_equal(temporal_profile(videos[0], 1.0)[:, 0], videos[0][0, :, 29])
    panel = profile_comparison(videos, 0.5, time_scale=4, gap=2)
    assert panel.shape == (20, 3 * 6 * 4 + 2 * 2, 3)
    assert np.array_equal(panel[:, 24 + 2:24 + 2 + 4], np.repeat(temporal_profile(videos[1], 0.5)[:, :1], 4, axis=1))
    grid = frame_grid(videos, 4, gap=2)
    assert grid.shape == (3 * 20 + 2 * 2, 4 * 30 + 3 * 2, 3)
    assert np.array_equal(grid[22:42, :30], videos[1][0]) and np.array_equal(grid[:20, -30:], videos[0][5])
    write_png(tmp_path / "plots" / "grid.png", grid)
    back = cv2.cvtColor(cv2.imread(str(tmp_path / "plots" / "grid.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, grid)
    with pytest.raises(ValueError, match="outside"):
        temporal_profile(videos[0], 30)
    with pytest.raises(ValueError, match="share"):
        frame_grid([videos[0], videos[0][:3]])


def test_config_and_video_conversion():
    assert from_dict(EvaluateConfig, {"max_clips": 3}).max_clips == 3
    with pytest.raises(ConfigError):
        from_dict(EvaluateConfig, {"profile_column": 1.5})
    with pytest.raises(ConfigError):
        from_dict(EvaluateConfig, {"lpips_wieghts": "x"})
    clip = torch.rand(3, 2, 5, 7)
    video = to_uint8_video(clip)
    assert video.shape == (2, 5, 7, 3) and video[1, 4, 6, 2] == round(float(clip[2, 1, 4, 6]) * 255)


def test_stage_script_writes_metrics_and_plots(tmp_path, monkeypatch, carphone):
    """pipeline.evaluate end to end on a tiny saved Stage II model and a two-clip test shard."""
    import pipeline.evaluate as stage
    from stcvq.data.shards import ShardConfig, ShardWriter, encode_frames

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    Stage2Model(Stage2Config.profile("tiny")).save_pretrained(tmp_path / "models" / "stage2-bfvr")
    with ShardWriter(tmp_path / "data" / "shards" / "bfvr", "test", "bfvr", ShardConfig(frame_codec="ffv1")) as writer:
        for sample in _samples(carphone, count=2, frames=4, size=16):
            writer.write(sample["meta"]["key"], {"hq.mkv": encode_frames(to_uint8_video(sample["hq"])),
                                                 "lq.mkv": encode_frames(to_uint8_video(sample["lq"])), "json": b"{}"})
    monkeypatch.setattr(stage, "load_params", lambda *sections: {"evaluate": {"faces": False, "max_clips": 2}})
    own = {"task": "bfvr", "model": "stage2", "testset": "test"}
    stage.main(stage_argv("evaluate", own))
    report = json.loads((tmp_path / "metrics" / "evaluate" / "bfvr" / "stage2-test.json").read_text())
    _check_report(report)
    assert report["task"] == "bfvr" and report["clips"] == 2
    plots = tmp_path / "plots" / "evaluate" / "bfvr" / "stage2-test"
    profile = cv2.imread(str(plots / "temporal_profile.png"))
    frames = cv2.imread(str(plots / "frames.png"))
    assert profile.shape == (16, 3 * 4 * 4 + 2 * 2, 3)  # input | output | GT, 4 frames x 4 px each
    assert frames.shape == (3 * 16 + 2 * 2, 4 * 16 + 3 * 2, 3)
    with pytest.raises(SystemExit, match="unknown task"):
        stage.main(stage_argv("evaluate", {**own, "task": "denoise"}))
    with pytest.raises(ConfigError, match=r"evaluate\.testsets: no test set 'vfhq'; known: \['test'\]"):
        stage.main(stage_argv("evaluate", {**own, "testset": "vfhq"}))

    # a model of another clip size (an imported 512^2 one, here 32^2) scores the 16^2 clips resized
    Stage2Model(Stage2Config.profile("tiny", size=32)).save_pretrained(tmp_path / "models" / "published-bfvr")
    stage.main(stage_argv("evaluate", {**own, "model": "published"}))
    other = json.loads((tmp_path / "metrics" / "evaluate" / "bfvr" / "published-test.json").read_text())
    assert other["clips"] == 2 and other["input"]["psnr"] == report["input"]["psnr"]
    assert other["output"]["psnr"] != report["output"]["psnr"]
