"""Stage II model: frozen Stage I parts, LQ encoder init, time-axis residual, restore contract,
export, resolution errors, paper-profile size and cost on the meta device."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stcvq.config import ConfigError
from stcvq.nn.restorer import PROFILES, Stage2Arch, Stage2Config, Stage2Model
from stcvq.nn.vqgan import Stage1Config, Stage1Model
from stcvq.training.batches import TensorClips
from stcvq.training.loop import TrainConfig, train
from stcvq.training.stage2 import Stage2Objective, Stage2TrainConfig


def _stage1(seed: int = 0) -> Stage1Model:
    torch.manual_seed(seed)
    model = Stage1Model(Stage1Config.tiny())
    with torch.no_grad():  # spread the codes so the nearest-code targets use many of them
        for vq in (model.spatial_codebook, model.temporal_codebook):
            vq.codebook.weight.normal_(0, 0.5)
    return model


def _frozen_state(model: Stage2Model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.vqgan.state_dict().items() if not k.startswith("encoder.")}


def test_lq_encoder_starts_as_a_copy_of_the_hq_encoder():
    stage1 = _stage1()
    model = Stage2Model.from_stage1(stage1, Stage2Config.profile("tiny"))
    hq_state = stage1.encoder.state_dict()
    for k, v in model.lq_encoder.state_dict().items():
        assert torch.equal(v, hq_state[k]), k
    assert model.lq_encoder is not stage1.encoder  # a copy, not the same module
    x = torch.rand(1, 3, 4, 16, 16)
    torch.testing.assert_close(model.vqgan.encode(x), stage1.encode(x), rtol=0, atol=0)


def test_from_stage1_refuses_another_stage1_config():
    with pytest.raises(ValueError, match="stage1 section differs"):
        Stage2Model.from_stage1(Stage1Model(Stage1Config.tiny(latent_dim=8)), Stage2Config.profile("tiny"))


def test_only_lq_encoder_and_transformers_are_trainable():
    model = Stage2Model(Stage2Config.profile("tiny"))
    trainable = {n.split(".")[0] if not n.startswith("vqgan.") else ".".join(n.split(".")[:2])
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vqgan.encoder", "spatial_transformer", "temporal_transformer"}


@pytest.mark.slow
def test_frozen_parts_do_not_change_in_training_but_the_trained_parts_do(tmp_path):
    stage1 = _stage1()
    model = Stage2Model.from_stage1(stage1, Stage2Config.profile("tiny"))
    frozen = _frozen_state(model)
    encoder = {k: v.clone() for k, v in model.lq_encoder.state_dict().items()}
    head = model.temporal_transformer.head.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    hq = torch.rand(4, 3, 4, 16, 16, generator=g)
    data = TensorClips(hq, extra={"lq": (hq * 0.6).clamp(0, 1)})
    cfg = TrainConfig(steps=3, batch_size=2, lr=1e-2, min_lr=1e-3, ema_decay=0, num_samples=0, log_every=1)
    result = train(Stage2Objective(model, stage1), data, cfg, tmp_path, val_batches=None)
    trained = result.model
    for k, v in trained.vqgan.state_dict().items():
        if not k.startswith("encoder."):
            assert torch.equal(v, frozen[k]), f"frozen weight {k} changed"
    assert any(not torch.equal(v, encoder[k]) for k, v in trained.lq_encoder.state_dict().items())
    assert not torch.equal(trained.temporal_transformer.head.weight, head)


@pytest.mark.slow
def test_activation_checkpointing_trains_stage2_to_the_same_weights(tmp_path):
    """TrainConfig.activation_checkpointing reaches the LQ encoder and both transformers and
    changes no bit."""
    stage1 = _stage1()
    hq = torch.rand(4, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    data = TensorClips(hq, extra={"lq": (hq * 0.6).clamp(0, 1)})
    weights = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = Stage2Model.from_stage1(stage1, Stage2Config.profile("tiny"))
        cfg = TrainConfig(steps=2, batch_size=2, lr=1e-2, min_lr=1e-3, ema_decay=0, num_samples=0,
                          activation_checkpointing=checkpointing)
        result = train(Stage2Objective(model, stage1), data, cfg, tmp_path / str(checkpointing), val_batches=None)
        assert result.model.lq_encoder.checkpointing is checkpointing
        assert result.model.spatial_transformer.checkpointing is result.model.temporal_transformer.checkpointing
        assert result.model.temporal_transformer.checkpointing is checkpointing
        weights.append(result.model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_temporal_ce_trains_the_encoder_through_the_frozen_ta():
    model = Stage2Model.from_stage1(_stage1(), Stage2Config.profile("tiny"))
    out = model(torch.rand(2, 3, 4, 16, 16))
    out.logits_temporal.logsumexp(1).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.lq_encoder.parameters())
    assert all(p.grad is None for p in model.vqgan.temporal.parameters())  # frozen: no grad of its own


def test_temporal_input_takes_the_residual_along_time():
    model = Stage2Model(Stage2Config.profile("tiny")).eval()
    ta = model.vqgan.temporal.attention
    torch.manual_seed(0)
    # constant over time, varying over h and w: the time residual is zero (any other axis's is not)
    static = torch.randn(1, 16, 1, 4, 4).expand(1, 16, 3, 4, 4).contiguous()
    torch.testing.assert_close(model.temporal_input(static), ta(static))
    # varying over time only: the residual is z[t] - z[t-1], zero for the first frame
    ramp = torch.arange(3.0).view(1, 1, 3, 1, 1) * torch.randn(1, 16, 1, 1, 1)
    moving = ramp.expand(1, 16, 3, 4, 4).contiguous()
    residual = model.temporal_input(moving) - ta(moving)
    torch.testing.assert_close(residual[:, :, 0], torch.zeros_like(residual[:, :, 0]))
    torch.testing.assert_close(residual[:, :, 1], moving[:, :, 1] - moving[:, :, 0])
    torch.testing.assert_close(residual[:, :, 2], moving[:, :, 2] - moving[:, :, 1])


def test_forward_feeds_the_temporal_transformer_the_temporal_input():
    model = Stage2Model(Stage2Config.profile("tiny")).eval()
    x = torch.rand(1, 3, 4, 16, 16)
    with torch.no_grad():
        out = model(x)
        z = model.vqgan.encode(x)
        torch.testing.assert_close(out.logits_temporal, model.temporal_transformer(model.temporal_input(z)))
        torch.testing.assert_close(out.logits_spatial, model.spatial_transformer(z))


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 9])
def test_restore_keeps_shape_and_range_for_any_length_in_frame_layout(frames):
    torch.manual_seed(0)
    model = Stage2Model(Stage2Config.profile("tiny")).eval()
    clips = torch.rand(2, 3, frames, 16, 16)
    out = model.restore(clips)
    assert out.shape == clips.shape
    assert out.min() >= 0 and out.max() <= 1
    # clamped, not min-max renormalised: equals the decoded indices, clamped
    s, t = model.predict_indices(clips)
    torch.testing.assert_close(out, model.vqgan.decode(model.vqgan.lookup(s, t), (frames, 16, 16)).clamp(0, 1))


def test_restore_batch_items_do_not_mix():
    torch.manual_seed(0)
    model = Stage2Model(Stage2Config.profile("tiny")).eval()
    clips = torch.rand(3, 3, 3, 16, 16)
    together = model.restore(clips)
    alone = torch.cat([model.restore(clips[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_clip_layout_restores_up_to_its_clip_length():
    model = Stage2Model(Stage2Config.profile("tiny", token_layout="clip")).eval()
    for frames in (1, 3, 4):
        assert model.restore(torch.rand(1, 3, frames, 16, 16)).shape == (1, 3, frames, 16, 16)
    with pytest.raises(ValueError, match="latent frames"):
        model.restore(torch.rand(1, 3, 6, 16, 16))


def test_other_resolution_is_a_clear_error_unless_interpolating(tmp_path):
    torch.manual_seed(0)
    model = Stage2Model(Stage2Config.profile("tiny")).eval()
    with pytest.raises(ValueError, match="trained on 16x16 clips, got 24x24"):
        model.restore(torch.rand(1, 3, 4, 24, 24))
    model.save_pretrained(tmp_path)
    loose = Stage2Model.from_pretrained(tmp_path, interpolate_positions=True)
    assert loose.restore(torch.rand(1, 3, 4, 24, 24)).shape == (1, 3, 4, 24, 24)
    x = torch.rand(1, 3, 4, 16, 16)  # at the trained size interpolation changes nothing
    assert torch.equal(loose.restore(x), model.restore(x))


def test_save_and_load_round_trip_is_bit_exact_and_self_contained(tmp_path):
    stage1 = _stage1()
    model = Stage2Model.from_stage1(stage1, Stage2Config.profile("tiny", "deflicker")).eval()
    with torch.no_grad():
        for p in model.spatial_transformer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    del stage1  # nothing of Stage I's folder is needed
    loaded = Stage2Model.from_pretrained(tmp_path / "m")
    assert loaded.task == "deflicker" and loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.rand(2, 3, 5, 16, 16)
    assert torch.equal(model.restore(x), loaded.restore(x))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "stcvq-stage2"


def test_loading_rejects_missing_files_and_mismatched_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Stage2Model.from_pretrained(tmp_path)
    Stage2Model(Stage2Config.profile("tiny")).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["spatial"]["width"] = raw["temporal"]["width"] = 32
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="weights do not match"):
        Stage2Model.from_pretrained(tmp_path)


def test_config_checks_grid_codes_and_task():
    cfg = Stage2Config.profile("tiny")
    assert cfg.latent_grid == (2, 4, 4) and cfg.spatial.grid == (2, 4, 4)
    with pytest.raises(ConfigError, match="position grid"):
        dataclasses.replace(cfg, size=32)
    with pytest.raises(ConfigError, match="task"):
        Stage2Config.profile("tiny", "denoise")
    paper = {task: Stage2Config.profile("paper", task) for task in ("bfvr", "deflicker", "deflicker-pixel")}
    assert paper["bfvr"].lambda_ce == 1.0 and paper["deflicker"].lambda_ce == 0.5
    assert (paper["bfvr"].spatial.layers, paper["bfvr"].spatial.heads) == (9, 2)
    assert (paper["deflicker-pixel"].temporal.layers, paper["deflicker-pixel"].temporal.heads) == (6, 4)
    assert paper["bfvr"].latent_grid == (12, 64, 64)
    assert Stage2Config.profile("embedded", "deflicker").latent_grid == (4, 16, 16)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_builds_for_every_task(name):
    for task in ("bfvr", "deflicker", "deflicker-pixel"):
        cfg = Stage2Config.profile(name, task)
        profile = PROFILES[name]
        assert (cfg.task, cfg.clip_length, cfg.size, cfg.stage1) == (
            task, profile.clip_length, profile.size, profile.stage1())
        assert cfg.motion_residual == ("reference" if name == "reference" else "time")
        assert cfg.spatial.layout == cfg.temporal.layout == profile.arch.layout


def test_profile_overrides_and_their_errors():
    cfg = Stage2Config.profile("tiny", "deflicker", size=32, layers=3, lambda_ce=2.0)
    assert cfg.size == 32 and cfg.latent_grid == (2, 8, 8) and cfg.spatial.layers == cfg.temporal.layers == 3
    assert cfg.lambda_ce == 2.0 and cfg.spatial.heads == 2  # the tiny profile's heads, not the paper's 4
    assert cfg == Stage2Config.build(Stage1Config.tiny(), "deflicker", 4, 32,
                                     Stage2Arch(width=16, ffn=32, layers=3, heads=2, lambda_ce=2.0))
    with pytest.raises(ConfigError, match="profile must be one of"):
        Stage2Config.profile("huge")
    with pytest.raises(ConfigError, match=r"unknown Stage II profile overrides \['widht'\]"):
        Stage2Config.profile("tiny", widht=8)


def test_stage2_train_config_merges_task_overrides_and_rejects_typos():
    section = {"model": {"width": 32, "ffn": 64, "layers": 1}, "schedule": "incremental", "noisefree_steps": 5,
               "train": {"steps": 7, "batch_size": 2},
               "tasks": {"bfvr": {},
                         "deflicker": {"model": {"layers": 2}, "train": {"steps": 9}, "noisefree_steps": 0}}}
    bfvr = Stage2TrainConfig.for_task(section, "bfvr", clip_length=4, size=16)
    deflicker = Stage2TrainConfig.for_task(section, "deflicker", clip_length=4, size=16)
    assert (bfvr.task, bfvr.model.layers, bfvr.train.steps, bfvr.noisefree_steps) == ("bfvr", 1, 7, 5)
    assert (deflicker.model.layers, deflicker.model.width,
            deflicker.train.steps, deflicker.train.batch_size) == (2, 32, 9, 2)
    assert (deflicker.task, deflicker.clip_length, deflicker.size, deflicker.noisefree_steps) == ("deflicker", 4, 16, 0)
    model = deflicker.model_config(Stage1Config.tiny())
    assert model == Stage2Config.build(Stage1Config.tiny(), "deflicker", 4, 16, deflicker.model)
    assert (model.spatial.layers, model.spatial.heads, model.lambda_ce) == (2, 4, 0.5)  # heads, lambda: the paper's
    for bad, match in (({"noisefree_step": 3}, "unknown key"), ({"schedule": "holistc"}, "schedule"),
                       ({"tasks": {"bvfr": {}}}, "unknown task"),
                       ({"tasks": {"bfvr": {"shedule": "holistic"}}}, "unknown key"),
                       ({"tasks": {"bfvr": {"model": {"widht": 8}}}}, "unknown key"),
                       ({"model": {"motion_residual": "frames"}}, "motion_residual"),
                       ({"size": 32}, "come from the stage's task, clips.length and resolution")):
        with pytest.raises(ConfigError, match=match):
            Stage2TrainConfig.for_task({**section, **bad}, "bfvr", clip_length=4, size=16)
    with pytest.raises(ConfigError, match="task"):
        Stage2TrainConfig.for_task(section, "denoise", clip_length=4, size=16)


def test_incremental_schedule_phases():
    cfg = Stage2TrainConfig(train=TrainConfig(steps=30), noisefree_steps=20)
    assert cfg.phases(has_noisefree=True) == [("noisefree", "lq_noisefree", 20), ("full", "lq", 30)]
    assert cfg.phases(has_noisefree=False) == [("full", "lq", 50)]
    holistic = dataclasses.replace(cfg, schedule="holistic")
    assert holistic.phases(has_noisefree=True) == [("full", "lq", 50)]


# -- paper profile on the meta device ----------------------------------------------------------
def _paper_cost(task: str, attention: str, layout: str) -> tuple[int, int]:
    stage1 = dataclasses.replace(PROFILES["paper"].stage1(), attn_layout=attention)
    # the published transformers attend within a frame only; the clip layout is stcvq's
    arch = {"token_layout": "clip", "layout": "stcvq"} if layout == "clip" else {}
    cfg = Stage2Config.profile("paper", task, stage1=stage1, **arch)
    with torch.device("meta"):
        model = Stage2Model(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        out = model.restore(torch.empty(1, 3, 24, 512, 512, device="meta"))
    assert out.shape == (1, 3, 24, 512, 512)
    return params, int(counter.get_total_flops())


def test_paper_profile_parameters_and_flops_on_meta():
    """The reference's Stage II uses 51.4 M parameters and 29.4 TFLOP at 24 x 512^2 (docs/design.md)."""
    costs = {(task, layout): _paper_cost(task, "global", layout)
             for task in ("bfvr", "deflicker") for layout in ("frame", "clip")}
    for (task, layout), (params, flops) in costs.items():
        print(f"paper {task} {layout}: {params / 1e6:.2f} M parameters, {flops / 1e12:.2f} TFLOP")
    for task in ("bfvr", "deflicker"):
        params, flops_frame = costs[(task, "frame")]
        assert abs(params / 51.4e6 - 1) < 0.1, params  # same architecture family, within 10%
        assert abs(flops_frame / 29.4e12 - 1) < 0.15, flops_frame
        assert costs[(task, "clip")][1] > 1.5 * flops_frame  # t*h*w tokens per sequence: quadratic
    # factorised Stage I attention removes most of the global attention's cost
    assert _paper_cost("bfvr", "factorized", "frame")[1] < 0.7 * costs[("bfvr", "frame")][1]
