"""Adversarial loss with a frozen pretrained feature network and small trainable heads.

Backbones (transformers classes, hub id or local folder):
``facebook/dinov2-small`` (default, ViT-S/14) and ``facebook/dinov2-base`` (ViT-B/14) via
``Dinov2Model``; ``openai/clip-vit-base-patch16`` (CLIP ViT-B) via ``CLIPVisionModel``. The
class is picked from the folder's config.json ``model_type``.

Frozen means ``requires_grad=False`` on the backbone's weights, never ``torch.no_grad``: the
generator's adversarial gradient has to flow *through* the backbone to the fake frames (the
reference code ran it under no_grad, so the generator got nothing; docs/design.md, section 3.1).
Heads sit on several depths (multi-scale features) and give per-token logits; the loss is hinge.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

BACKBONES = {
    "dinov2-small": "facebook/dinov2-small",
    "dinov2-base": "facebook/dinov2-base",
    "clip-b16": "openai/clip-vit-base-patch16",
}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def load_backbone(name_or_path: str, local_files_only: bool = True) -> nn.Module:
    """A Dinov2Model or CLIPVisionModel from a short name, hub id or local folder.

    ``local_files_only`` (default) never downloads at run time: the hub id must already be in
    the local Hugging Face cache. Raises OSError with the id when the weights are not there."""
    from transformers import AutoConfig, CLIPVisionModel, Dinov2Model

    ref = BACKBONES.get(name_or_path, name_or_path)
    config = AutoConfig.from_pretrained(ref, local_files_only=local_files_only)
    if config.model_type == "dinov2":
        model = Dinov2Model.from_pretrained(ref, local_files_only=local_files_only)
    elif config.model_type in ("clip", "clip_vision_model"):
        model = CLIPVisionModel.from_pretrained(ref, local_files_only=local_files_only)
    else:
        raise ValueError(f"{ref}: model_type {config.model_type!r} is not a supported backbone (dinov2, clip)")
    return model


class TokenHead(nn.Module):
    """Per-token logits from one depth's features: LayerNorm -> Linear -> LeakyReLU -> Linear."""

    def __init__(self, width: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens).squeeze(-1)


class FeatureDiscriminator(nn.Module):
    """Frozen ViT backbone + trainable heads on ``num_heads`` evenly spaced depths."""

    def __init__(self, backbone: nn.Module, num_heads: int = 4, head_hidden: int = 256, image_size: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        cfg = backbone.config
        self.is_clip = cfg.model_type.startswith("clip")
        self.image_size = image_size or int(cfg.image_size)
        self.patch_size = int(cfg.patch_size)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch size {self.patch_size}")
        depth = int(cfg.num_hidden_layers)
        n = max(1, min(num_heads, depth))
        self.depths: list[int] = sorted({round(depth * (i + 1) / n) for i in range(n)})
        self.heads = nn.ModuleList(TokenHead(int(cfg.hidden_size), head_hidden) for _ in self.depths)
        mean, std = _CLIP if self.is_clip else _IMAGENET
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "FeatureDiscriminator":
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout, whatever the mode of the heads
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, T, H, W) in [0, 1] -> list of per-frame, per-token logits (B*T, tokens), one per head."""
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        if (h, w) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
        frames = (frames - self.mean.to(frames.dtype)) / self.std.to(frames.dtype)
        out = self.backbone(pixel_values=frames, output_hidden_states=True)
        hidden = out.hidden_states  # embeddings, then one per layer
        return [head(hidden[d][:, 1:]) for d, head in zip(self.depths, self.heads)]  # drop the CLS token


def hinge_d_loss(logits_real: Sequence[torch.Tensor], logits_fake: Sequence[torch.Tensor]) -> torch.Tensor:
    loss = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(logits_real, logits_fake))
    return loss / len(logits_real)


def hinge_g_loss(logits_fake: Sequence[torch.Tensor]) -> torch.Tensor:
    return -sum(f.mean() for f in logits_fake) / len(logits_fake)


def build_discriminator(backbone: str, num_heads: int = 4, head_hidden: int = 256, image_size: int | None = None,
                        local_files_only: bool = True) -> FeatureDiscriminator | None:
    """The discriminator, or None (adversarial loss off, logged as a warning) when the
    backbone's weights are not available here."""
    try:
        net = load_backbone(backbone, local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        log.warning("adversarial loss OFF: backbone %r could not be loaded (%s)", backbone, str(err).splitlines()[0])
        return None
    log.info("discriminator backbone %s (%s), frozen", backbone, type(net).__name__)
    return FeatureDiscriminator(net, num_heads=num_heads, head_hidden=head_hidden, image_size=image_size)


__all__ = ["BACKBONES", "FeatureDiscriminator", "build_discriminator", "hinge_d_loss", "hinge_g_loss", "load_backbone"]
