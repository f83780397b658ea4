"""RAFT-large optical flow (Teed & Deng, ECCV 2020) in plain torch.

torchvision does not import here, so the network is rebuilt with torchvision's
``raft_large`` layout and parameter names: its published state dicts
(``raft_large_C_T_SKHT_V2-ff5fadd5.pth`` and the other ``Raft_Large_Weights``) load unchanged,
through ``torch.load(weights_only=True)`` or from ``.safetensors``. 5,257,536 parameters,
as torchvision documents for raft_large.

Input: float (N, 3, H, W) RGB in [-1, 1], H and W multiples of 8. ``forward`` returns the
flow after each refinement step (the last is the answer), each (N, 2, H, W) in pixels with
``image1[y, x] ~ image2[y + dy, x + dx]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stcvq.evaluation.metrics.weights import load_into, load_state_dict


def conv_norm_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, norm: type[nn.Module] | None = None,
                   relu: bool = True) -> nn.Sequential:
    """Conv (bias, 'same' padding) [+ norm] [+ ReLU], indexed like torchvision's Conv2dNormActivation."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, bias=True)]
    if norm is not None:
        layers.append(norm(out_ch))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, norm: type[nn.Module], stride: int = 1) -> None:
        super().__init__()
        self.convnormrelu1 = conv_norm_relu(in_ch, out_ch, 3, stride, norm)
        self.convnormrelu2 = conv_norm_relu(out_ch, out_ch, 3, 1, norm)
        self.downsample = nn.Identity() if stride == 1 else conv_norm_relu(in_ch, out_ch, 1, stride, norm, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.downsample(x) + self.convnormrelu2(self.convnormrelu1(x)))


class FeatureEncoder(nn.Module):
    """/8 encoder; instance norm for the matching features, batch norm for the context."""

    def __init__(self, norm: type[nn.Module], layers=(64, 64, 96, 128, 256), strides=(2, 1, 2, 2)) -> None:
        super().__init__()
        self.convnormrelu = conv_norm_relu(3, layers[0], 7, strides[0], norm)
        for i in range(3):
            first = ResidualBlock(layers[i], layers[i + 1], norm, strides[i + 1])
            setattr(self, f"layer{i + 1}", nn.Sequential(first, ResidualBlock(layers[i + 1], layers[i + 1], norm)))
        self.conv = nn.Conv2d(layers[3], layers[4], kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.layer3(self.layer2(self.layer1(self.convnormrelu(x)))))


class CorrBlock(nn.Module):
    """All-pairs correlation pyramid, looked up in a (2r+1)^2 window at each level (no weights)."""

    def __init__(self, num_levels: int = 4, radius: int = 4) -> None:
        super().__init__()
        self.num_levels, self.radius = num_levels, radius
        self.out_channels = num_levels * (2 * radius + 1) ** 2

    def build_pyramid(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> list[torch.Tensor]:
        n, c, h, w = fmap1.shape
        corr = fmap1.flatten(2).transpose(1, 2) @ fmap2.flatten(2) / c**0.5  # (N, HW, HW)
        level = corr.reshape(n * h * w, 1, h, w)
        pyramid = [level]
        for _ in range(self.num_levels - 1):
            level = F.avg_pool2d(level, kernel_size=2, stride=2)
            pyramid.append(level)
        return pyramid

    def lookup(self, pyramid: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        n, _, h, w = coords.shape
        side = 2 * self.radius + 1
        offsets = torch.linspace(-self.radius, self.radius, side, device=coords.device)
        # window[i, j] = (x offset offsets[i], y offset offsets[j]): the channel order of the
        # trained weights (x varies slowest)
        window = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).view(1, side, side, 2)
        centres = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
        features = []
        for level in pyramid:
            lh, lw = level.shape[-2:]
            points = centres + window
            x = 2 * points[..., :1] / max(lw - 1, 1) - 1
            y = 2 * points[..., 1:] / max(lh - 1, 1) - 1
            grid = torch.cat([x, y], dim=-1)
            features.append(F.grid_sample(level, grid, mode="bilinear", align_corners=True).view(n, h, w, -1))
            centres = centres / 2
        return torch.cat(features, dim=-1).permute(0, 3, 1, 2).contiguous()


class MotionEncoder(nn.Module):
    def __init__(self, corr_channels: int, out_channels: int = 128) -> None:
        super().__init__()
        self.convcorr1 = conv_norm_relu(corr_channels, 256, 1)
        self.convcorr2 = conv_norm_relu(256, 192, 3)
        self.convflow1 = conv_norm_relu(2, 128, 7)
        self.convflow2 = conv_norm_relu(128, 64, 3)
        self.conv = conv_norm_relu(192 + 64, out_channels - 2, 3)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        motion = torch.cat([self.convcorr2(self.convcorr1(corr)), self.convflow2(self.convflow1(flow))], dim=1)
        return torch.cat([self.conv(motion), flow], dim=1)


class ConvGRU(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, kernel: tuple[int, int], padding: tuple[int, int]) -> None:
        super().__init__()
        for gate in ("convz", "convr", "convq"):
            setattr(self, gate, nn.Conv2d(hidden_size + input_size, hidden_size, kernel, padding=padding))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z, r = torch.sigmoid(self.convz(hx)), torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class RecurrentBlock(nn.Module):
    """Two separable GRUs: 1x5 then 5x1."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.convgru1 = ConvGRU(input_size, hidden_size, (1, 5), (0, 2))
        self.convgru2 = ConvGRU(input_size, hidden_size, (5, 1), (2, 0))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.convgru2(self.convgru1(h, x), x)


class FlowHead(nn.Module):
    def __init__(self, in_channels: int = 128, hidden_size: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_size, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_size, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    def __init__(self, corr_channels: int, context_channels: int = 128, hidden_size: int = 128) -> None:
        super().__init__()
        self.motion_encoder = MotionEncoder(corr_channels)
        self.recurrent_block = RecurrentBlock(128 + context_channels, hidden_size)
        self.flow_head = FlowHead(hidden_size)

    def forward(self, hidden, context, corr, flow):
        hidden = self.recurrent_block(hidden, torch.cat([context, self.motion_encoder(flow, corr)], dim=1))
        return hidden, self.flow_head(hidden)


class MaskPredictor(nn.Module):
    """Convex-upsampling weights: 9 neighbours for each of the 8x8 sub-pixels (RAFT s3.3)."""

    def __init__(self, in_channels: int = 128, hidden_size: int = 256) -> None:
        super().__init__()
        self.convrelu = conv_norm_relu(in_channels, hidden_size, 3)
        self.conv = nn.Conv2d(hidden_size, 8 * 8 * 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.25 * self.conv(self.convrelu(x))  # 0.25 as trained


def coords_grid(n: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(N, 2, h, w) pixel coordinates, channel 0 = x, channel 1 = y."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys]).expand(n, 2, h, w)


def upsample_flow(flow: torch.Tensor, mask: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Convex combination of the 3x3 coarse neighbours for each fine pixel (flow scaled by 8)."""
    n, c, h, w = flow.shape
    weights = torch.softmax(mask.view(n, 1, 9, factor, factor, h, w), dim=2)
    neighbours = F.unfold(factor * flow, kernel_size=3, padding=1).view(n, c, 9, 1, 1, h, w)
    fine = (weights * neighbours).sum(dim=2)  # (n, c, factor, factor, h, w)
    return fine.permute(0, 1, 4, 2, 5, 3).reshape(n, c, h * factor, w * factor)


class RAFT(nn.Module):
    """RAFT-large (torchvision ``raft_large`` layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_encoder = FeatureEncoder(nn.InstanceNorm2d)
        self.context_encoder = FeatureEncoder(nn.BatchNorm2d)
        self.corr_block = CorrBlock()
        self.update_block = UpdateBlock(self.corr_block.out_channels)
        self.mask_predictor = MaskPredictor()
        self.hidden_size = 128
        self.requires_grad_(False)
        self.eval()

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, num_flow_updates: int = 12) -> list[torch.Tensor]:
        n, _, h, w = image1.shape
        if h % 8 or w % 8:
            raise ValueError(f"RAFT needs H and W divisible by 8, got {h}x{w}")
        fmap1, fmap2 = self.feature_encoder(torch.cat([image1, image2], dim=0)).chunk(2, dim=0)
        pyramid = self.corr_block.build_pyramid(fmap1, fmap2)
        hidden, context = self.context_encoder(image1).split([self.hidden_size, 128], dim=1)
        hidden, context = torch.tanh(hidden), F.relu(context)
        coords0 = coords_grid(n, h // 8, w // 8, image1.device)
        coords1 = coords0.clone()
        flows = []
        for _ in range(num_flow_updates):
            corr = self.corr_block.lookup(pyramid, coords1)
            hidden, delta = self.update_block(hidden, context, corr, coords1 - coords0)
            coords1 = coords1 + delta
            flows.append(upsample_flow(coords1 - coords0, self.mask_predictor(hidden)))
        return flows


def load_raft(path: str | Path) -> RAFT:
    """RAFT-large filled from a torchvision ``raft_large`` state dict (.pth or .safetensors)."""
    model = RAFT()
    load_into(model, load_state_dict(path), path)
    return model
