"""Reconstruction losses: L1 and a VGG19 perceptual loss built in plain torch.

torchvision does not import here, so VGG19's feature stack is rebuilt with torchvision's exact
layer layout (``features.{i}`` indices), which lets torchvision's ``vgg19-dcbb9e9d.pth`` (or a
safetensors conversion of it) load unchanged. Weights come from a local path only (loaded with
``weights_only=True``; nothing is unpickled). Without weights the perceptual loss is off and
:func:`build_perceptual_loss` says so in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# torchvision's configuration "E" (VGG19): conv widths, "M" = 2x2 max pool.
VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
# features.{index} of the ReLUs after conv1_2, conv2_2, conv3_4, conv4_4, conv5_4.
RELU_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_4": 35}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Where torch.hub would have cached torchvision's weights.
DEFAULT_VGG19_FILES = ("~/.cache/torch/hub/checkpoints/vgg19-dcbb9e9d.pth",)


class VGG19Features(nn.Module):
    def __init__(self, last_index: int = 35):
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                width = int(item)
        self.features = nn.Sequential(*layers[: last_index + 1])

    def forward(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        wanted, out = set(indices), []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out.append(x)
            if len(out) == len(wanted):
                break
        return out


def load_vgg19_state(path: str | Path) -> dict[str, torch.Tensor]:
    """features.* tensors from a .safetensors or .pth file (torchvision key names)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VGG19 weights not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k.startswith("features.")}


class PerceptualLoss(nn.Module):
    """Weighted L1 distance between frozen VGG19 features of output and target frames."""

    def __init__(self, features: VGG19Features, layer_weights: dict[str, float] | None = None):
        super().__init__()
        self.layer_weights = layer_weights or {"relu1_2": 0.1, "relu2_2": 0.1, "relu3_4": 1.0, "relu4_4": 1.0,
                                               "relu5_4": 1.0}
        unknown = set(self.layer_weights) - set(RELU_INDEX)
        if unknown:
            raise ValueError(f"unknown VGG19 layers {sorted(unknown)}; known: {sorted(RELU_INDEX)}")
        self.indices = [RELU_INDEX[k] for k in self.layer_weights]
        self.features = features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET[1]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) clips in [0, 1]; features per frame."""
        frames = lambda v: ((v.transpose(1, 2).flatten(0, 1)) - self.mean) / self.std  # noqa: E731
        pair = self.features(torch.cat([frames(output), frames(target)]), sorted(self.indices))
        by_index = dict(zip(sorted(self.indices), pair))
        loss = output.new_zeros(())
        for name, weight in self.layer_weights.items():
            f_out, f_tgt = by_index[RELU_INDEX[name]].chunk(2)
            loss = loss + weight * F.l1_loss(f_out, f_tgt.detach())
        return loss


def build_perceptual_loss(weights: str | None, layer_weights: dict[str, float] | None = None) -> PerceptualLoss | None:
    """The VGG19 perceptual loss from ``weights`` (a local file; None tries the torch.hub
    cache), or None with a warning when no weights are found."""
    candidates = [weights] if weights else list(DEFAULT_VGG19_FILES)
    for candidate in candidates:
        try:
            state = load_vgg19_state(candidate)
        except FileNotFoundError:
            continue
        features = VGG19Features(max(RELU_INDEX[k] for k in (layer_weights or RELU_INDEX)))
        own = features.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ValueError(f"{candidate}: not VGG19 features weights (missing {missing[:3]}...)")
        features.load_state_dict({k: state[k] for k in own})
        log.info("perceptual loss: VGG19 features from %s", candidate)
        return PerceptualLoss(features, layer_weights)
    log.warning("perceptual loss OFF: no VGG19 weights at %s", ", ".join(str(c) for c in candidates))
    return None


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(output, target)
