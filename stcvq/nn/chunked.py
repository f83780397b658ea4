"""Inference of the full-resolution VQGAN layers a few frames at a time (bounded memory).

At 24 x 512^2 one 64-channel float32 feature map is 1.5 GiB, and the plain layer-by-layer
forward keeps several alive at once (input, normalised copy, activation, conv output, the conv
library's reordered copy). Here every 3x3x3 conv computes its output in chunks of frames from
its input's frames plus a one-frame halo, and the GroupNorm + SiLU before it is applied to
that slice only, with statistics taken once over the whole clip. The result equals the
unchunked forward (up to float rounding): GroupNorm still sees the whole clip, the halo
frames give each output frame the same inputs, and the zero padding at the clip's ends is
added explicitly where the unchunked conv would add it.

Only layers that are local in time can be chunked; attention blocks run whole.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample3d, ResBlock3d, Upsample3d

CHANNELS_LAST = torch.channels_last_3d
FrameFn = Callable[[int, int], torch.Tensor]  # (first, end) -> those frames of a conv's input


def _norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """SiLU(GroupNorm(.)) for slices of ``x`` along T, with ``x``'s whole-clip statistics.

    Written as x * scale + shift per channel, the form torch's CPU GroupNorm kernel uses."""
    b, c = x.shape[:2]
    groups = norm.num_groups
    if x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous():  # views, no copy
        var, mean = torch.var_mean(x.permute(0, 2, 3, 4, 1).reshape(b, -1, groups, c // groups).float(),
                                   dim=(1, 3), unbiased=False)
    else:
        var, mean = torch.var_mean(x.reshape(b, groups, -1).float(), dim=2, unbiased=False)
    rstd = torch.rsqrt(var + norm.eps)  # (B, G)
    weight = norm.weight.float().reshape(1, groups, c // groups)
    scale = (rstd[:, :, None] * weight).reshape(b, c, 1, 1, 1)
    shift = norm.bias.float().reshape(1, c, 1, 1, 1) - mean.repeat_interleave(c // groups, dim=1).reshape(b, c, 1, 1, 1) * scale

    def apply(frames: torch.Tensor) -> torch.Tensor:
        return F.silu(torch.addcmul(shift, frames.float(), scale).to(frames.dtype), inplace=True)

    return apply


def _conv_frames(conv: nn.Conv3d, source: FrameFn, length: int, first: int, end: int) -> torch.Tensor:
    """Output frames [first, end) of ``conv`` over a ``length``-frame input given by ``source``."""
    kernel, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    lo = first * stride - pad  # input frames the output frames read, padding included
    hi = (end - 1) * stride - pad + kernel
    frames = _pad_frames(source(max(lo, 0), min(hi, length)), max(-lo, 0), max(hi - length, 0))
    return F.conv3d(frames, conv.weight, conv.bias, (stride, *conv.stride[1:]), (0, *conv.padding[1:]))


def _pad_frames(frames: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Zero frames around ``frames`` (the padding the whole-clip conv adds at the clip's ends),
    in channels-last layout: oneDNN's convs run on it without reordering to a blocked copy."""
    if before or after:
        zeros = lambda n: torch.zeros_like(frames[:, :, :1]).expand(-1, -1, n, -1, -1)  # noqa: E731
        frames = torch.cat([zeros(before), frames, zeros(after)], dim=2)
    return frames.contiguous(memory_format=CHANNELS_LAST)


def _chunked_conv(conv: nn.Conv3d, source: FrameFn, length: int, chunk: int, out: torch.Tensor,
                  add: Callable[[int, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Fill ``out`` (B, C_out, T_out, H, W) chunk by chunk; ``add(first, end)`` is summed in."""
    for first in range(0, out.shape[2], chunk):
        end = min(first + chunk, out.shape[2])
        frames = _conv_frames(conv, source, length, first, end)
        if add is not None:
            frames += add(first, end)
        out[:, :, first:end] = frames
    return out


def _out_size(conv: nn.Conv3d, size: tuple[int, ...]) -> tuple[int, ...]:
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, conv.kernel_size, conv.stride, conv.padding))


def _empty(x: torch.Tensor, channels: int, size: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An output map in channels-last layout: a range of its frames is one contiguous block."""
    return torch.empty(x.shape[0], channels, *size, dtype=dtype, device=x.device, memory_format=CHANNELS_LAST)


def _conv_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a conv's output has under the current autocast (bf16/fp16), or ``x``'s."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def conv(conv: nn.Conv3d, x: torch.Tensor, chunk: int, norm: nn.GroupNorm | None = None) -> torch.Tensor:
    """``conv(x)``, or ``conv(silu(norm(x)))`` with ``norm``, ``chunk`` output frames at a time."""
    act = _norm_silu(norm, x) if norm is not None else (lambda frames: frames)
    out = _empty(x, conv.out_channels, _out_size(conv, x.shape[2:]), _conv_dtype(x))
    return _chunked_conv(conv, lambda a, b: act(x[:, :, a:b]), x.shape[2], chunk, out)


def resblock(block: ResBlock3d, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``block(x)`` computed ``chunk`` output frames at a time.

    The output overwrites the hidden map ``h`` chunk by chunk (the original activation of the
    one frame the next chunk still reads is kept aside), so the block holds x, h and one chunk."""
    h = conv(block.conv1, x, chunk, norm=block.norm1)
    act = _norm_silu(block.norm2, h)
    skip = lambda a, b: block.skip(x[:, :, a:b])  # noqa: E731  (1x1x1 or identity: local in time)
    if isinstance(block.skip, nn.Identity) and torch.promote_types(h.dtype, x.dtype) != h.dtype:
        out = _empty(x, block.conv2.out_channels, tuple(h.shape[2:]), x.dtype)  # x + h is x's dtype
        return _chunked_conv(block.conv2, lambda a, b: act(h[:, :, a:b]), h.shape[2], chunk, out, add=skip)
    conv2, length = block.conv2, h.shape[2]
    before = None  # activation of the frame before the chunk, taken before it was overwritten
    for first in range(0, length, chunk):
        end = min(first + chunk, length)
        current = act(h[:, :, first : min(end + 1, length)])
        if before is not None:
            current = torch.cat([before, current], dim=2)
        frames = _pad_frames(current, int(before is None), int(end == length))
        last = current.shape[2] - 1 - int(end < length)  # where frame end - 1 is in current
        before = current[:, :, last : last + 1].clone()
        frames = F.conv3d(frames, conv2.weight, conv2.bias, 1, (0, *conv2.padding[1:]))
        frames += skip(first, end)
        h[:, :, first:end] = frames
    return h


def upsample(up: Upsample3d, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``up(x)``: nearest x2 (frame i of the upsampled clip is frame i // 2 when temporal)."""
    t_scale = int(up.scale[0])
    size = (x.shape[2] * t_scale, x.shape[3] * 2, x.shape[4] * 2)

    def source(a: int, b: int) -> torch.Tensor:
        frames = x[:, :, torch.arange(a, b, device=x.device) // t_scale]
        return F.interpolate(frames, scale_factor=(1.0, 2.0, 2.0), mode="nearest")

    out = _empty(x, up.conv.out_channels, size, _conv_dtype(x))
    return _chunked_conv(up.conv, source, size[0], chunk, out)


def run(module: nn.Module, x: torch.Tensor, budget_bytes: int | None, norm: nn.GroupNorm | None = None) -> torch.Tensor:
    """``module(x)`` (with ``norm``: ``module(silu(norm(x)))``, ``module`` a conv).

    A ResBlock3d, Upsample3d, Downsample3d or Conv3d whose feature maps exceed
    ``budget_bytes`` runs in chunks of output frames that fit it, when no gradient is
    recorded; anything else runs whole."""
    chunk = frames_per_chunk(module, x, budget_bytes)
    if chunk is None:
        return module(F.silu(norm(x))) if norm is not None else module(x)
    if isinstance(module, ResBlock3d):
        return resblock(module, x, chunk)
    if isinstance(module, Upsample3d):
        return upsample(module, x, chunk)
    return conv(module.conv if isinstance(module, Downsample3d) else module, x, chunk, norm)


def frames_per_chunk(module: nn.Module, x: torch.Tensor, budget_bytes: int | None) -> int | None:
    """Output frames per chunk so that the widest feature map of one chunk fits
    ``budget_bytes``; None where ``module`` runs whole (gradients recorded, no budget, a module
    that is not local in time, or the whole clip fits)."""
    if budget_bytes is None or torch.is_grad_enabled():
        return None
    t, area = x.shape[2], x.shape[3] * x.shape[4]
    if isinstance(module, ResBlock3d):
        frames_out, frame_area = t, area
    elif isinstance(module, Upsample3d):
        frames_out, frame_area = t * int(module.scale[0]), area * 4
    elif isinstance(module, (Downsample3d, nn.Conv3d)):
        conv = module.conv if isinstance(module, Downsample3d) else module
        frames_out, frame_area = _out_size(conv, x.shape[2:])[0], area * conv.stride[0]  # input frames per output frame
    else:
        return None
    channels = max(x.shape[1], *(m.out_channels for m in module.modules() if isinstance(m, nn.Conv3d)))
    frames = max(1, budget_bytes // (channels * frame_area * x.element_size()))
    return None if frames >= frames_out else frames
