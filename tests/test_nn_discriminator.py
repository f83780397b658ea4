"""Frozen-backbone discriminator and VGG19 perceptual loss, with tiny random models of the real
classes saved to a temp folder and loaded through the real loading code."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from stcvq.nn.discriminator import FeatureDiscriminator, build_discriminator, hinge_d_loss, hinge_g_loss
from stcvq.nn.losses import RELU_INDEX, VGG19Features, build_perceptual_loss

transformers = pytest.importorskip("transformers")


def tiny_backbone(kind: str, folder) -> str:
    common = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=28,
                  patch_size=14)
    torch.manual_seed(0)
    if kind == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    else:
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**common))
    path = folder / kind
    model.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("kind", ["dinov2", "clip"])
def test_generator_gradient_flows_through_frozen_backbone(kind, tmp_path):
    disc = build_discriminator(tiny_backbone(kind, tmp_path), num_heads=2, head_hidden=16)
    assert isinstance(disc, FeatureDiscriminator)
    assert type(disc.backbone).__name__ == ("Dinov2Model" if kind == "dinov2" else "CLIPVisionModel")
    assert disc.depths == [2, 4]
    assert all(not p.requires_grad for p in disc.backbone.parameters())
    backbone_before = {k: v.clone() for k, v in disc.backbone.state_dict().items()}
    heads_before = {k: v.clone() for k, v in disc.heads.state_dict().items()}

    generator = torch.nn.Conv3d(3, 3, 3, padding=1)
    real = torch.rand(2, 3, 2, 32, 32)
    fake = torch.sigmoid(generator(torch.rand(2, 3, 2, 32, 32)))
    hinge_g_loss(disc(fake)).backward()
    assert generator.weight.grad is not None and generator.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.backbone.parameters())

    opt = torch.optim.Adam(disc.trainable_parameters(), lr=1e-2)
    opt.zero_grad()
    hinge_d_loss(disc(real), disc(fake.detach())).backward()
    opt.step()
    assert all(torch.equal(v, backbone_before[k]) for k, v in disc.backbone.state_dict().items())
    assert any(not torch.equal(v, heads_before[k]) for k, v in disc.heads.state_dict().items())


def test_hinge_losses():
    real, fake = [torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.0])]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.25 + 0.5)
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)


def test_missing_backbone_turns_adversarial_loss_off(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert build_discriminator(str(tmp_path / "nowhere")) is None
    assert "adversarial loss OFF" in caplog.text


@pytest.mark.slow
def test_training_step_with_discriminator_keeps_backbone_and_moves_heads(tmp_path):
    from stcvq.nn.vqgan import Stage1Config
    from stcvq.training.batches import TensorClips
    from stcvq.training.loop import TrainConfig, load_state
    from stcvq.training.stage1 import Stage1LossConfig, Stage1TrainConfig, train_stage1

    cfg = Stage1TrainConfig(
        model=Stage1Config.tiny(nf=4, ch_mult=(1, 2), temporal_downsample=(True,), latent_dim=8,
                                num_codes_spatial=16, num_codes_temporal=16),
        loss=Stage1LossConfig(perceptual_weight=0, discriminator=tiny_backbone("dinov2", tmp_path), disc_heads=2,
                              adversarial_weight=0.5),
        train=TrainConfig(steps=2, batch_size=2, lr=1e-3, min_lr=1e-4, ema_decay=0, ckpt_every=100),
    )
    fresh = build_discriminator(cfg.loss.discriminator, num_heads=2)
    result_dir = tmp_path / "run"
    disc = train_stage1(cfg, TensorClips(torch.rand(4, 3, 2, 16, 16)), result_dir).objective.discriminator
    fresh_state = fresh.backbone.state_dict()
    assert all(torch.equal(v, fresh_state[k]) for k, v in disc.backbone.state_dict().items())
    assert any(not torch.equal(v, fresh.heads.state_dict()[k]) for k, v in disc.heads.state_dict().items())
    ckpt = next((result_dir / "checkpoints").glob("step_*"))
    saved = load_state(ckpt, "objective")["discriminator"]  # the heads, not the hub's frozen backbone
    assert saved.keys() == {k for k in disc.state_dict() if k.startswith("heads.")}
    assert all(torch.equal(v, disc.state_dict()[k]) for k, v in saved.items())


def test_vgg19_layout_loads_torchvision_names(tmp_path, caplog):
    features = VGG19Features()
    names = [k for k in features.state_dict()]
    # torchvision's vgg19: 16 convs at these feature indices
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert names == [f"features.{i}.{w}" for i in conv_idx for w in ("weight", "bias")]
    assert RELU_INDEX["relu5_4"] == 35 and isinstance(features.features[35], torch.nn.ReLU)
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.05 for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision checkpoint has these too
    torch.save(state, tmp_path / "vgg19.pth")
    save_file({k: v for k, v in state.items() if k.startswith("features.")}, str(tmp_path / "vgg19.safetensors"))
    a = build_perceptual_loss(str(tmp_path / "vgg19.pth"))
    b = build_perceptual_loss(str(tmp_path / "vgg19.safetensors"))
    assert torch.equal(a.features.features[34].weight, state["features.34.weight"])
    out = torch.rand(1, 3, 2, 32, 32, requires_grad=True)
    target = torch.rand(1, 3, 2, 32, 32)
    la, lb = a(out, target), b(out, target)
    assert la.item() == pytest.approx(lb.item()) and la.item() > 0
    la.backward()
    assert out.grad.abs().sum() > 0 and all(p.grad is None for p in a.features.parameters())
    with caplog.at_level(logging.WARNING):
        assert build_perceptual_loss(str(tmp_path / "missing.pth")) is None
    assert "perceptual loss OFF" in caplog.text
