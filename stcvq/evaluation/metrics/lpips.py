"""LPIPS (Zhang et al., CVPR 2018, v0.1) in plain torch: a frozen AlexNet or VGG16 trunk and
one learned 1x1 "linear" head per tapped layer.

torchvision and the ``lpips`` package do not import here, so the network is rebuilt with the
same layout and module names, which lets the published files load unchanged:

* trunk: torchvision's ImageNet weights, ``alexnet-owt-7be5be79.pth`` or
  ``vgg16-397923af.pth`` (keys ``features.N.weight``; the ``classifier.*`` keys are ignored);
* heads: the ``lpips`` package's ``weights/v0.1/alex.pth`` or ``vgg.pth``
  (keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``);
* or one full ``lpips.LPIPS`` state dict (``net.sliceK.N.weight`` + ``linK.model.1.weight``).

Any of these may be ``.safetensors`` instead of ``.pth``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from stcvq.evaluation.metrics.weights import load_into, load_state_dict

log = logging.getLogger(__name__)

# The trunk layers whose ReLU outputs LPIPS compares (torchvision `features` indices, end-exclusive).
_ALEX_SLICES = (2, 5, 8, 10, 12)  # relu1 .. relu5
_ALEX_CHANNELS = (64, 192, 384, 256, 256)
_VGG_SLICES = (4, 9, 16, 23, 30)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG_CHANNELS = (64, 128, 256, 512, 512)


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features``, same indices."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` (no batch norm), same indices."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers)


class NetLinLayer(nn.Module):
    """A 1x1 conv to one channel; ``model.1`` matches the lpips package's key names."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """``forward(a, b)`` -> (N,) distances for images (N, 3, H, W) scaled to [-1, 1]."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net == "alex":
            self.features, self.slices, channels = alexnet_features(), _ALEX_SLICES, _ALEX_CHANNELS
        elif net == "vgg":
            self.features, self.slices, channels = vgg16_features(), _VGG_SLICES, _VGG_CHANNELS
        else:
            raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        for i, ch in enumerate(channels):
            self.add_module(f"lin{i}", NetLinLayer(ch))
        # lpips' ScalingLayer: maps [-1, 1] input to ImageNet normalisation.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out, start = [], 0
        for end in self.slices:
            for layer in self.features[start:end]:
                x = layer(x)
            out.append(x)
            start = end
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(a.shape[0])
        for i, (fa, fb) in enumerate(zip(self.taps(a), self.taps(b))):
            # unit-normalise over channels (eps as in lpips.normalize_tensor)
            fa = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}")((fa - fb).pow(2)).mean(dim=(1, 2, 3))
        return total


def _rename_lpips_key(key: str) -> str:
    """``net.slice3.8.weight`` (full lpips state dict) -> ``features.8.weight``."""
    m = re.match(r"net\.slice\d\.(\d+)\.(weight|bias)$", key)
    return f"features.{m.group(1)}.{m.group(2)}" if m else key


def load_lpips(weights: str | Path | list[str | Path], net: str = "alex") -> LPIPS:
    """Build :class:`LPIPS` and fill it from one or more files (trunk + heads, or one full dict).

    Raises WeightsError naming the file when a file is missing or does not fit.
    """
    paths = [weights] if isinstance(weights, (str, Path)) else list(weights)
    model = LPIPS(net)
    wanted = set(model.state_dict())
    merged: dict[str, torch.Tensor] = {}
    for path in paths:
        state = {_rename_lpips_key(k): v for k, v in load_state_dict(path).items()}
        merged.update({k: v for k, v in state.items() if k in wanted})  # drop classifier.*, scaling buffers
    load_into(model, merged, ", ".join(str(p) for p in paths))
    return model
