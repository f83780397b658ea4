"""Inference of the full-resolution VQGAN layers a few frames at a time (bounded memory).

At 24 x 512^2 one 64-channel float32 feature map is 1.5 GiB, and the plain layer-by-layer
forward keeps several alive at once (input, normalised copy, activation, conv output, the conv
library's reordered copy). Here every 3x3x3 conv computes its output in chunks of frames from
its input's frames plus a one-frame halo, and the GroupNorm + SiLU before it is applied to
that slice only, with statistics taken once over the whole clip. The result equals the
unchunked forward (up to float rounding): GroupNorm still sees the whole clip, the halo
frames give each output frame the same inputs, and the zero padding at the clip's ends is
added explicitly where the unchunked conv would add it.

Speed: each chunk's conv input is written once, straight into one channels-last buffer (zero
frames at the clip's ends included), which oneDNN's convs read without reordering; building it
by concatenation and a layout copy costs far more (docs/benchmarks.md, "Enhancing").

Only layers that are local in time can be chunked; attention blocks run whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample3d, ResBlock3d, Upsample3d

CHANNELS_LAST = torch.channels_last_3d
Activation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (frames, out) -> out = act(frames)


def _channel_moments(x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 mean and variance of ``x`` (B, C, T, H, W) per sample and channel.

    One pass, ``chunk`` frames at a time (one float32 chunk of memory), over deviations from
    the first frame's channel means: close to the clip's means, so E[d^2] - E[d]^2 keeps the
    precision of torch's own var_mean. A sum over T, H, W with C innermost (channels-last) is a
    fast column reduction; var_mean over the grouped view took 3x as long."""
    length, count = x.shape[2], x[0, 0].numel()
    shift = x[:, :, :1].float().mean(dim=(2, 3, 4), keepdim=True)
    total = squares = 0
    for a in range(0, length, chunk):
        frames = x[:, :, a : a + chunk]
        # float32 deviations; a bf16 slice is converted first (a mixed-dtype sub took 1.8x as long)
        deviation = frames - shift if frames.dtype == torch.float32 else frames.float().sub_(shift)
        total = total + deviation.sum(dim=(2, 3, 4))
        squares = squares + deviation.mul_(deviation).sum(dim=(2, 3, 4))
    mean_deviation = total / count
    return shift.flatten(1) + mean_deviation, squares / count - mean_deviation.square()


def _norm_silu(norm: nn.GroupNorm, x: torch.Tensor, chunk: int, activate: bool = True) -> Activation:
    """SiLU(GroupNorm(.)) (without ``activate``: GroupNorm(.)) for slices of ``x`` along T,
    with ``x``'s whole-clip statistics.

    Written as x * scale + shift per channel, the form torch's CPU GroupNorm kernel uses."""
    b, c = x.shape[:2]
    groups = norm.num_groups
    channel_mean, channel_var = (m.reshape(b, groups, c // groups) for m in _channel_moments(x, chunk))
    # Group statistics from equal-sized channels: the mean of the means, and the mean of each
    # channel's variance plus its mean's squared distance from the group mean.
    mean = channel_mean.mean(dim=2, keepdim=True)
    var = (channel_var + (channel_mean - mean).square()).mean(dim=2, keepdim=True)
    scale = (torch.rsqrt(var + norm.eps) * norm.weight.float().reshape(1, groups, c // groups)).reshape(b, c, 1, 1, 1)
    shift = norm.bias.float().reshape(1, c, 1, 1, 1) - mean.expand(-1, -1, c // groups).reshape(b, c, 1, 1, 1) * scale

    def apply(frames: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # In the maps' own dtype: a bf16 map times float32 factors takes torch's slow
        # mixed-dtype path (50x the time, 1 x 64 x 8 x 256^2); the result is bf16 either way.
        torch.addcmul(shift.to(frames.dtype), frames, scale.to(frames.dtype), out=out)
        return F.silu(out, inplace=True) if activate else out

    return apply


@dataclass
class _ConvInput:
    """A conv's input map (B, C, length, *size), produced a range of frames at a time."""

    like: torch.Tensor  # batch, device and dtype of the map
    channels: int
    length: int
    size: tuple[int, int]
    write: Callable[[int, int, torch.Tensor], object]  # frames [a, b) into out (B, C, b - a, *size)
    view: Callable[[int, int], torch.Tensor] | None = None  # frames [a, b) without a copy, if any

    def frames(self, lo: int, hi: int) -> torch.Tensor:
        """Frames [lo, hi) as one channels-last tensor, zero outside [0, length) (the padding
        the whole-clip conv adds at the clip's ends)."""
        a, b = max(lo, 0), min(hi, self.length)
        if self.view is not None and (a, b) == (lo, hi):
            part = self.view(a, b)
            if part.is_contiguous(memory_format=CHANNELS_LAST):
                return part
        out = _empty(self.like, self.channels, (hi - lo, *self.size), self.like.dtype)
        out[:, :, : a - lo].zero_()
        out[:, :, b - lo :].zero_()
        self.write(a, b, out[:, :, a - lo : b - lo])
        return out


def _plain_input(x: torch.Tensor) -> _ConvInput:
    return _ConvInput(x, x.shape[1], x.shape[2], tuple(x.shape[3:]),
                      write=lambda a, b, out: out.copy_(x[:, :, a:b]), view=lambda a, b: x[:, :, a:b])


def _activated_input(x: torch.Tensor, act: Activation) -> _ConvInput:
    return _ConvInput(x, x.shape[1], x.shape[2], tuple(x.shape[3:]), write=lambda a, b, out: act(x[:, :, a:b], out))


def _upsampled_input(x: torch.Tensor, time_scale: int) -> _ConvInput:
    """Nearest x2 in H and W (and ``time_scale`` in T: frame i is frame i // time_scale of x),
    written straight into the conv's input buffer as a broadcast copy."""
    h, w = x.shape[3:]

    def write(a: int, b: int, out: torch.Tensor) -> None:
        frames = x[:, :, torch.arange(a, b, device=x.device) // time_scale]
        cells = out.permute(0, 2, 3, 4, 1).unflatten(2, (h, 2)).unflatten(4, (w, 2))  # (B, T, h, 2, w, 2, C), a view
        cells.copy_(frames.permute(0, 2, 3, 4, 1)[:, :, :, None, :, None, :])

    return _ConvInput(x, x.shape[1], x.shape[2] * time_scale, (2 * h, 2 * w), write=write)


def _conv_frames(conv: nn.Conv3d, source: _ConvInput, first: int, end: int, pad_end: bool = False) -> torch.Tensor:
    """Output frames [first, end) of ``conv`` over ``source``; ``pad_end``: one zero row and
    column after the map's last (frames past the end are zero already)."""
    kernel, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    lo = first * stride - pad  # input frames the output frames read, padding included
    hi = (end - 1) * stride - pad + kernel
    frames = source.frames(lo, hi)
    if pad_end:
        frames = F.pad(frames, (0, 1, 0, 1))
    return F.conv3d(frames, conv.weight, conv.bias, (stride, *conv.stride[1:]), (0, *conv.padding[1:]))


def _chunked_conv(conv: nn.Conv3d, source: _ConvInput, chunk: int, out: torch.Tensor,
                  add: Callable[[int, int], torch.Tensor] | None = None, pad_end: bool = False) -> torch.Tensor:
    """Fill ``out`` (B, C_out, T_out, H, W) chunk by chunk; ``add(first, end)`` is summed in."""
    for first in range(0, out.shape[2], chunk):
        end = min(first + chunk, out.shape[2])
        frames = _conv_frames(conv, source, first, end, pad_end)
        if add is not None:
            frames += add(first, end)
        out[:, :, first:end] = frames
    return out


def _out_size(conv: nn.Conv3d, size: tuple[int, ...], pad_end: bool = False) -> tuple[int, ...]:
    geometry = zip(size, conv.kernel_size, conv.stride, conv.padding)
    return tuple((n + 2 * p + pad_end - k) // s + 1 for n, k, s, p in geometry)


def _empty(x: torch.Tensor, channels: int, size: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An output map in channels-last layout: a range of its frames is one contiguous block."""
    return torch.empty(x.shape[0], channels, *size, dtype=dtype, device=x.device, memory_format=CHANNELS_LAST)


def _conv_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a conv's output has under the current autocast (bf16/fp16), or ``x``'s."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def conv(conv: nn.Conv3d, x: torch.Tensor, chunk: int, norm: nn.GroupNorm | None = None, activate: bool = True,
         pad_end: bool = False) -> torch.Tensor:
    """``conv(x)``, or ``conv(silu(norm(x)))`` with ``norm`` (``conv(norm(x))`` without
    ``activate``), ``chunk`` output frames at a time; ``pad_end``: x zero-padded by one at the
    end of T, H and W first."""
    source = _activated_input(x, _norm_silu(norm, x, chunk, activate)) if norm is not None else _plain_input(x)
    out = _empty(x, conv.out_channels, _out_size(conv, x.shape[2:], pad_end), _conv_dtype(x))
    return _chunked_conv(conv, source, chunk, out, pad_end=pad_end)


def resblock(block: ResBlock3d, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``block(x)`` computed ``chunk`` output frames at a time.

    The output overwrites the hidden map ``h`` chunk by chunk (the activation of the one frame
    the next chunk still reads is kept aside), so the block holds x, h and one chunk."""
    h = conv(block.conv1, x, chunk, norm=block.norm1)
    act = _norm_silu(block.norm2, h, chunk)
    skip = lambda a, b: block.skip(x[:, :, a:b])  # noqa: E731  (1x1x1 or identity: local in time)
    if isinstance(block.skip, nn.Identity) and torch.promote_types(h.dtype, x.dtype) != h.dtype:
        out = _empty(x, block.conv2.out_channels, tuple(h.shape[2:]), x.dtype)  # x + h is x's dtype
        return _chunked_conv(block.conv2, _activated_input(h, act), chunk, out, add=skip)
    conv2, length = block.conv2, h.shape[2]
    before = None  # activation of frame first - 1, taken before h's frame was overwritten
    for first in range(0, length, chunk):
        end = min(first + chunk, length)
        hi = min(end + 1, length)
        frames = _empty(h, h.shape[1], (end - first + 2, *h.shape[3:]), h.dtype)  # frames first - 1 .. end
        if before is None:
            frames[:, :, :1].zero_()
        else:
            frames[:, :, :1] = before
        act(h[:, :, first:hi], frames[:, :, 1 : 1 + hi - first])
        frames[:, :, 1 + hi - first :].zero_()  # frame end is past the clip: padding
        before = frames[:, :, end - first : end - first + 1].clone()
        out = F.conv3d(frames, conv2.weight, conv2.bias, 1, (0, *conv2.padding[1:]))
        out += skip(first, end)
        h[:, :, first:end] = out
    return h


def upsample(up: Upsample3d, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``up(x)``: nearest x2 (frame i of the upsampled clip is frame i // 2 when temporal)."""
    source = _upsampled_input(x, int(up.scale[0]))
    out = _empty(x, up.conv.out_channels, (source.length, *source.size), _conv_dtype(x))
    return _chunked_conv(up.conv, source, chunk, out)
def run(module: nn.Module, x: torch.Tensor, budget_bytes: int | None, norm: nn.GroupNorm | None = None,
        activate: bool = True) -> torch.Tensor:
    """``module(x)`` (with ``norm``: ``module(silu(norm(x)))``, or ``module(norm(x))`` without
    ``activate``; ``module`` a conv).

    A ResBlock3d, Upsample3d, Downsample3d or Conv3d whose feature maps exceed
    ``budget_bytes`` runs in chunks of output frames that fit it, when no gradient is
    recorded; anything else runs whole."""
    chunk = frames_per_chunk(module, x, budget_bytes)
    if chunk is None:
        if norm is None:
            return module(x)
        return module(F.silu(norm(x)) if activate else norm(x))
    if isinstance(module, ResBlock3d):
        return resblock(module, x, chunk)
    if isinstance(module, Upsample3d):
        return upsample(module, x, chunk)
    if isinstance(module, Downsample3d):
        return conv(module.conv, x, chunk, pad_end=module.pad_end)
    return conv(module, x, chunk, norm, activate)


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
        pad_end = isinstance(module, Downsample3d) and module.pad_end
        frames_out = _out_size(conv, x.shape[2:], pad_end)[0]
        frame_area = area * conv.stride[0]  # input frames per output frame
    else:
        return None
    channels = max(x.shape[1], *(m.out_channels for m in module.modules() if isinstance(m, nn.Conv3d)))
    frames = max(1, budget_bytes // (channels * frame_area * x.element_size()))
    return None if frames >= frames_out else frames
