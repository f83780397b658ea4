"""Small networks of the reference layout: imported, run by `stcvq enhance` on real face video,
and a reference Stage I imported to train an stcvq Stage II on.

The published network at 512^2 takes minutes per 24-frame window on a 2-core CPU (docs/benchmarks.md,
"Enhancing"), so these tests import a small network of the same layout
(reference downsampling, sigmoid output, reference TA and Stage II residual, CodeFormer-style
transformers) from a file in the reference's own format: the importer, the model folder,
windowing, resizing, face crop and audio are the code paths the published models take.
"""

from __future__ import annotations

import json
import subprocess

import av
import numpy as np
import pytest
import torch
from reference_fixtures import rule_tensor

from stcvq.cli import main
from stcvq.media import video
from stcvq.nn.export import read_provenance
from stcvq.nn.restorer import Stage2Arch, Stage2Config, Stage2Model
from stcvq.nn.vqgan import Stage1Config
from stcvq.published import reference


def small_reference_config(task: str = "bfvr") -> Stage2Config:
    stage1 = Stage1Config(layout="reference", nf=8, ch_mult=(1, 2, 2, 4), num_res_blocks=1, latent_dim=16,
                          num_codes_spatial=32, num_codes_temporal=32, temporal_downsample=(True, False, False))
    return Stage2Config.profile("reference", task, stage1=stage1, clip_length=8, size=64, width=16, ffn=32, layers=1,
                                heads=2)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A reference-format checkpoint of the small network (weight rule), imported."""
    root = tmp_path_factory.mktemp("reference")
    config = small_reference_config()
    with torch.device("meta"):
        rules = reference.stage2_rules(Stage2Model(config))
    state = {k: rule_tensor(k, s) for k, s in reference.expected_layout(rules).items()}
    state["s_feat_emb.weight"] = torch.zeros(16, 16)  # stored by the published files, unused
    path = root / "ckpt-small.pth"
    torch.save({"params_ema": state}, path)
    return reference.import_checkpoint(path, "bfvr", root / "model", config=config)


def _with_audio(src, dst, frames: int, extra: list[str] = ()):
    """The first ``frames`` frames of ``src`` with a 440 Hz AAC track of the same length."""
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-f", "lavfi", "-i", "sine=frequency=440",
                    "-frames:v", str(frames), *extra, "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", str(dst)], check=True)
    return dst


def _audio_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(stream.duration * stream.time_base) if stream.duration else float(container.duration / 1e6)


def _check_kept(src, dst):
    a, b = video.probe(src, count_frames=True), video.probe(dst, count_frames=True)
    assert b.num_frames == a.num_frames
    assert b.fps == pytest.approx(a.fps, rel=1e-3)
    assert (b.width, b.height) == (a.width, a.height)
    assert video.probe_has_audio(dst)
    assert _audio_seconds(dst) == pytest.approx(_audio_seconds(src), abs=1 / a.fps)


def test_imported_model_folder_loads_with_its_provenance(imported):
    model = Stage2Model.from_pretrained(imported)
    assert model.config.stage1.layout == "reference" and model.config.motion_residual == "reference"
    provenance = read_provenance(imported)
    assert provenance["source_file"] == "ckpt-small.pth"
    assert provenance["dropped_keys"] == ["s_feat_emb.weight"]


def test_enhance_512_video_longer_than_a_window(imported, tmp_path):
    """512x512, 30 frames (windows of 8 with overlap), AAC audio: frame count, fps, audio kept."""
    src = tmp_path / "square.mp4"
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=512x512:rate=25",
                    "-frames:v", "30", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(tmp_path / "plain.mp4")],
                   check=True)
    _with_audio(tmp_path / "plain.mp4", src, 30)
    dst = tmp_path / "out.mp4"
    assert main(["enhance", str(src), "-o", str(dst), "--task", "bfvr", "--model", str(imported)]) == 0
    _check_kept(src, dst)
    frames = video.read_video(dst)
    assert frames.std() > 1  # the sigmoid output is an image, not a constant


@pytest.mark.parametrize("mode", [["--whole-frame"], ["--face-crop"]])
def test_enhance_carphone_non_square(imported, carphone_path, tmp_path, mode):
    """carphone (176x144, a real face) whole-frame and with the face crop pasted back."""
    src = _with_audio(carphone_path, tmp_path / "carphone.mp4", 30)
    dst = tmp_path / "out.mp4"
    assert main(["enhance", str(src), "-o", str(dst), "--task", "bfvr", "--model", str(imported), *mode]) == 0
    _check_kept(src, dst)
    if mode == ["--face-crop"]:  # pasted back: the corners, far from the face, keep the input
        a, b = video.read_video(src).astype(float), video.read_video(dst).astype(float)
        assert np.abs(a[:, :16, :16] - b[:, :16, :16]).mean() < 4


@pytest.mark.slow
def test_train_stage2_on_an_imported_reference_stage1(tmp_path):
    """A reference-format Stage I file becomes a Stage I folder that Stage II trains on with
    stcvq's own transformers and residual along time; the imported parts stay frozen."""
    from stcvq.nn.vqgan import Stage1Model
    from stcvq.training.batches import TensorClips
    from stcvq.training.loop import TrainConfig
    from stcvq.training.stage2 import Stage2TrainConfig, train_stage2

    stage1_config = small_reference_config().stage1
    with torch.device("meta"):
        rules = reference.stage1_rules(Stage1Model(stage1_config))
    path = tmp_path / "vqgan.pth"
    torch.save({"params_ema": {k: rule_tensor(k, s) for k, s in reference.expected_layout(rules).items()}}, path)
    stage1 = Stage1Model.from_pretrained(reference.import_stage1_checkpoint(path, tmp_path / "stage1", stage1_config))

    cfg = Stage2TrainConfig(task="bfvr", clip_length=8, size=64, model=Stage2Arch(width=16, ffn=32, layers=1, heads=2),
                            train=TrainConfig(steps=3, batch_size=2, ema_decay=0, num_samples=0, eval_every=1000,
                                              ckpt_every=1000, log_every=1000))
    config = cfg.model_config(stage1.config)
    assert config.motion_residual == "time" and config.spatial.layout == "stcvq"
    g = torch.Generator().manual_seed(0)
    hq = torch.rand(4, 3, 8, 64, 64, generator=g)
    lq = (hq + 0.05 * torch.randn(hq.shape, generator=g)).clamp(0, 1)
    results = train_stage2(cfg, stage1, lambda member: TensorClips(hq, extra={"lq": lq}), tmp_path / "run")
    model = results[-1].final
    trained = model.state_dict()
    for key, value in stage1.state_dict().items():
        if key.startswith("encoder."):
            continue
        assert torch.equal(trained[f"vqgan.{key}"], value), key  # frozen Stage I parts
    assert not torch.equal(trained["vqgan.encoder.conv_in.weight"], stage1.state_dict()["encoder.conv_in.weight"])
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in results[-1].history if "loss" in h)


def test_evaluate_scores_an_imported_model_on_a_paired_set(imported, carphone_path, tmp_path):
    """`stcvq evaluate --model <imported>`: carphone as ground truth, a degraded copy as input."""
    for side, extra in (("gt", []), ("lq", ["-vf", "scale=44:36,scale=176:144"])):
        (tmp_path / side).mkdir()
        subprocess.run([video.ffmpeg_exe(), "-v", "error", "-y", "-i", str(carphone_path), "-frames:v", "8", *extra,
                        "-c:v", "libx264", "-crf", "30", "-pix_fmt", "yuv420p", str(tmp_path / side / "carphone.mp4")],
                       check=True)
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--model", str(imported), "--lq", str(tmp_path / "lq"), "--gt", str(tmp_path / "gt"),
                 "-o", str(out), "--no-faces"]) == 0
    report = json.loads(out.read_text())
    assert report["task"] == "bfvr" and report["clips"] == 1
    assert report["output"]["psnr"] is not None and report["output"]["psnr"] != report["input"]["psnr"]


def test_no_embedded_default_notice_for_an_imported_model(imported):
    """The 64x64 notice is for the pipeline's own tiny models, not for imported weights."""
    from stcvq.cli import embedded_default_notice

    model = Stage2Model.from_pretrained(imported)
    assert model.size == 64
    assert embedded_default_notice(model, imported) is None
    plain = imported.parent / "plain"
    model.save_pretrained(plain)  # the same network without provenance: the notice applies
    assert "import-reference --download bfvr" in embedded_default_notice(model, plain)
