"""Enhancement with a real (randomly initialised) Stage II model: chunked inference and seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stcvq.inference.enhance import StreamConfig, WholeFrame, restore_stream
from stcvq.media import video
from stcvq.nn import chunked
from stcvq.nn.blocks import Downsample3d, ResBlock3d, Upsample3d
from stcvq.nn.restorer import Stage2Config, Stage2Model
from stcvq.nn.vqgan import Stage1Config, Stage1Model


def _set_chunk_bytes(model: Stage1Model, budget: int | None) -> None:
    model.encoder.chunk_bytes = model.decoder.chunk_bytes = budget


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_layers_equal_whole_layers(chunk):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 6, 5)  # 7 frames: not a multiple of 2 or 3
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    conv = torch.nn.Conv3d(8, 4, 3, padding=1)
    resblocks = ResBlock3d(8, 16), ResBlock3d(8, 8)  # projected and identity skip
    up_time, up_space = Upsample3d(8, temporal=True), Upsample3d(8, temporal=False)
    down = Downsample3d(8, temporal=True)
    with torch.no_grad():
        pairs = [
            (conv(torch.nn.functional.silu(norm(x))), chunked.conv(conv, x, chunk, norm=norm)),
            (conv(x), chunked.conv(conv, x, chunk)),
            *[(block(x), chunked.resblock(block, x, chunk)) for block in resblocks],
            (up_time(x), chunked.upsample(up_time, x, chunk)),
            (up_space(x), chunked.upsample(up_space, x, chunk)),
            (down(x[:, :, :6]), chunked.conv(down.conv, x[:, :, :6], chunk)),
        ]
    for whole, parts in pairs:
        assert parts.shape == whole.shape
        torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["global", "factorized"])
def test_chunked_stage1_equals_unchunked(layout):
    torch.manual_seed(0)
    model = Stage1Model(Stage1Config.tiny(attn_layout=layout)).eval()
    clip = torch.rand(2, 3, 7, 16, 20)  # T = 7: padded to 8, chunks of 1 and 3 frames do not divide it
    with torch.no_grad():
        _set_chunk_bytes(model, None)
        latent = model.encode(clip)
        z_q = model.quantize(latent).z_q
        decoded = model.decode(z_q)
        # 1 byte: one frame per chunk everywhere; 3 frames of the 8-channel full-size map
        for budget, frames in ((1, 1), (3 * 8 * 16 * 20 * 4, 3)):
            _set_chunk_bytes(model, budget)
            block = model.encoder.levels[0].blocks[0]
            assert chunked.frames_per_chunk(block, torch.zeros(1, 8, 8, 16, 20), budget) == frames
            torch.testing.assert_close(model.encode(clip), latent, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.decode(z_q), decoded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_channel_moments_keep_precision_far_from_zero(layout):
    """Whole-clip statistics from one chunked pass: a large offset (1000 + 0.01 noise, and a
    brighter last frame) must not cancel away the variance."""
    torch.manual_seed(0)
    x = 1000 + 0.01 * torch.randn(2, 4, 5, 6, 7, dtype=torch.float64)
    x[:, :, -1] += 0.05
    x = x.float()
    mean, var = chunked._channel_moments(x.contiguous(memory_format=layout), chunk=2)
    want_var, want_mean = torch.var_mean(x.double(), dim=(2, 3, 4), unbiased=False)
    torch.testing.assert_close(mean.double(), want_mean, rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double(), want_var, rtol=1e-5, atol=0)  # float32 var_mean: 6e-8


def test_chunking_only_without_gradients():
    block = ResBlock3d(8, 8)
    x = torch.zeros(1, 8, 4, 4, 4)
    assert chunked.frames_per_chunk(block, x, 1) is None  # gradients recorded: the plain forward
    with torch.no_grad():
        assert chunked.frames_per_chunk(block, x, 1) == 1
        assert chunked.frames_per_chunk(block, x, 1 << 30) is None  # fits: the plain forward
        assert chunked.frames_per_chunk(block, x, None) is None
        assert chunked.frames_per_chunk(torch.nn.Identity(), x, 1) is None


def test_chunked_stage2_restore_equals_unchunked():
    torch.manual_seed(0)
    model = Stage2Model(Stage2Config.profile("tiny")).eval()
    clips = torch.rand(1, 3, 4, 16, 16)
    _set_chunk_bytes(model.vqgan, None)
    whole = model.restore(clips)
    _set_chunk_bytes(model.vqgan, 1)
    torch.testing.assert_close(model.restore(clips), whole, rtol=1e-5, atol=1e-5)


def test_chunked_layers_under_bf16_autocast_match_the_whole_layers():
    """The chunked path writes bf16 activations into bf16 buffers; under autocast it must land
    where the plain bf16 forward lands (bf16 rounding apart), chunk boundaries included."""
    torch.manual_seed(0)
    model = Stage1Model(Stage1Config.tiny()).eval()
    clip = torch.rand(1, 3, 8, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _set_chunk_bytes(model, None)
        whole = model.decode(model.encode(clip)).float()
        _set_chunk_bytes(model, 1)
        parts = model.decode(model.encode(clip))
    assert (parts.float() - whole).abs().mean() < 0.01 * whole.abs().mean()


def test_no_seam_on_a_static_video_with_a_real_model(carphone_path):
    """A still video through a random-init Stage II model: the step between adjacent output
    frames at a window seam is no larger than the largest step inside a window."""
    torch.manual_seed(0)
    model = Stage2Model(Stage2Config.profile("embedded", "bfvr")).eval()
    _, frames = video.read_sampled(carphone_path, 1, 1)
    num_frames, length, overlap = 32, model.clip_length, 2  # windows at 0, 6, ..., 24: frames outside seams too
    still = [frames[0]] * num_frames
    framing = WholeFrame(*frames[0].shape[:2], model.size)
    config = StreamConfig(overlap=overlap)
    out = np.stack(list(restore_stream(iter(still), model, framing.to_model, framing.from_model, config)))
    steps = np.abs(np.diff(out.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))  # steps[i]: frame i -> i + 1
    stride = length - overlap
    starts = range(stride, num_frames - length + 1, stride)  # windows after the first
    at_seams = sorted({i for s in starts for i in range(s - 1, s + overlap)})
    inside = [i for i in range(len(steps)) if i not in at_seams]
    assert at_seams and inside
    assert steps[at_seams].max() <= steps[inside].max() + 1e-9
