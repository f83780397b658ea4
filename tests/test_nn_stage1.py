"""Stage I model: quantiser + MPR/PDR, TA and motion residual, any clip size, export, paper profile."""

from __future__ import annotations

import math

import pytest
import torch
from reference_fixtures import layout
from torch.utils.flop_counter import FlopCounterMode

from stcvq.config import ConfigError, from_dict
from stcvq.nn.blocks import SelfAttention3d
from stcvq.nn.quantize import VectorQuantizer, codebook_stats, kl_to_uniform
from stcvq.nn.temporal import Fusion, temporal_residual
from stcvq.nn.vqgan import Stage1Config, Stage1Model


def tiny_model(**overrides) -> Stage1Model:
    torch.manual_seed(0)
    return Stage1Model(Stage1Config.tiny(**overrides))


# -- temporal residual and TA -------------------------------------------------------------------
def test_temporal_residual_is_along_time_and_zero_for_first_frames():
    z = torch.tensor([0.0, 1.0, 3.0, 6.0]).view(1, 1, 4, 1, 1).expand(2, 3, 4, 2, 2)
    assert temporal_residual(z, 1)[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert temporal_residual(z, 2)[1, 2, :, 1, 1].tolist() == [0.0, 0.0, 3.0, 5.0]
    assert temporal_residual(z[:, :, :1], 1).abs().sum() == 0  # T = 1: no predecessor


def test_temporal_attention_mixes_time_not_space():
    attn = SelfAttention3d(8, "temporal")
    attn.norm = torch.nn.Identity()  # GroupNorm statistics span the whole clip; test the attention
    x = torch.randn(1, 8, 3, 4, 4)
    y = x.clone()
    y[:, :, 2, 0, 0] += 1.0  # change one position in the last frame
    dx = (attn(x) - attn(y)).abs().sum(1)[0]  # (t, h, w)
    assert dx[0, 0, 0] > 0  # frame 0 at that position sees it
    assert dx[:, 1:, :].sum() == 0 and dx[:, :, 1:].sum() == 0  # other positions do not


def test_spatial_attention_stays_within_each_frame():
    attn = SelfAttention3d(8, "spatial")
    attn.norm = torch.nn.Identity()
    x = torch.randn(1, 8, 3, 4, 4)
    y = x.clone()
    y[:, :, 2] += 1.0
    dx = (attn(x) - attn(y)).abs().sum((1, 3, 4))[0]
    assert dx[0] == 0 and dx[1] == 0 and dx[2] > 0


@pytest.mark.parametrize("tokens", ["global", "spatial", "temporal"])
def test_attention_equals_the_textbook_formula(tokens):
    """1x1x1 conv projections and an explicit softmax(QK^T / sqrt(d)) V over the chosen tokens."""
    torch.manual_seed(0)
    attn = SelfAttention3d(8, tokens, heads=2)
    x = torch.randn(2, 8, 3, 4, 5)
    q, k, v = attn.qkv(attn.norm(x)).chunk(3, dim=1)  # (B, C, t, h, w) each
    # sequences: global (b, t*h*w), spatial (b*t, h*w), temporal (b*h*w, t)
    perm = {"global": (0, 2, 3, 4, 1), "spatial": (0, 2, 3, 4, 1), "temporal": (0, 3, 4, 2, 1)}[tokens]
    seq_len = {"global": 3 * 4 * 5, "spatial": 4 * 5, "temporal": 3}[tokens]
    to_heads = lambda z: z.permute(*perm).reshape(-1, seq_len, 2, 4).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(to_heads(q) @ to_heads(k).transpose(-1, -2) / 2.0, dim=-1)  # sqrt(4) = 2
    out = (weights @ to_heads(v)).transpose(1, 2).reshape(-1, seq_len, 8)
    shape = {"global": (2, 3, 4, 5, 8), "spatial": (2, 3, 4, 5, 8), "temporal": (2, 4, 5, 3, 8)}[tokens]
    out = out.reshape(shape).permute(*[perm.index(i) for i in range(5)])
    torch.testing.assert_close(attn(x), x + attn.proj(out), rtol=1e-5, atol=1e-5)


# -- quantiser ------------------------------------------------------------------------------------
def test_quantizer_nearest_code_straight_through_and_loss():
    vq = VectorQuantizer(4, 2, beta=0.25)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    z = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.7]]).t().reshape(1, 2, 1, 1, 3).requires_grad_(True)
    q, idx, loss = vq(z)
    assert idx.shape == (1, 1, 1, 3) and idx.flatten().tolist() == [1, 2, 3]
    codes = vq.codebook.weight[idx.flatten()].t().reshape(1, 2, 1, 1, 3)
    assert torch.allclose(q, codes)
    mse = (z.detach() - codes.detach()).pow(2).mean()
    assert loss.item() == pytest.approx((1 + 0.25) * mse.item(), rel=1e-6)
    (q * torch.arange(6.0).view(1, 2, 1, 1, 3)).sum().backward()
    assert torch.equal(z.grad, torch.arange(6.0).view(1, 2, 1, 1, 3))  # STE: identity gradient


@pytest.mark.parametrize("power", [1.0, 4.0])
def test_mpr_matches_hand_computation(power):
    torch.manual_seed(1)
    n_codes, dim, eps = 5, 3, 1e-6
    vq = VectorQuantizer(n_codes, dim, regularizer="mpr", reg_eps=eps, reg_power=power)
    with torch.no_grad():
        vq.codebook.weight.normal_()
    z = torch.randn(2, dim, 2, 1, 3)
    reg = vq.quantize(z).terms["reg"].item()
    tokens = z.permute(0, 2, 3, 4, 1).reshape(-1, dim).tolist()
    codes = vq.codebook.weight.tolist()
    marginal = [0.0] * n_codes
    for tok in tokens:  # Eq. 6 by hand: s = row-normalised 1 / Euclidean distance (** power)
        inv = [1.0 / (math.sqrt(sum((a - b) ** 2 for a, b in zip(tok, c)) + eps) + eps) ** power for c in codes]
        for n in range(n_codes):
            marginal[n] += inv[n] / sum(inv) / len(tokens)
    kl = sum(p * math.log(p * n_codes) for p in marginal)
    assert reg == pytest.approx(kl, rel=1e-4, abs=1e-9)
    assert kl > 0


def test_mpr_power_sharpens_towards_argmin_usage():
    """Collapsed usage (every token nearest code 0): Eq. 6's flat similarities hide the collapse,
    a larger power exposes it (KL towards log N, the one-hot value)."""
    torch.manual_seed(0)
    codes = torch.randn(64, 4)
    z = (codes[0] + 0.05 * torch.randn(200, 4)).t().reshape(1, 4, 1, 1, 200)
    kl = {}
    for power in (1.0, 8.0):
        vq = VectorQuantizer(64, 4, regularizer="mpr", reg_power=power)
        with torch.no_grad():
            vq.codebook.weight.copy_(codes)
        kl[power] = vq.quantize(z).terms["reg"].item()
    assert kl[8.0] > 0.5 * math.log(64) > kl[1.0]


def test_mpr_pulls_unused_codes_to_the_data():
    """Figure 5's mechanism on the quantiser alone: fixed tokens, codes spread wider than the
    data (``init="normal"``). Without a regulariser a code moves only once it wins a token;
    Eq. 6's gradient reaches every code and pulls unused ones towards the tokens."""
    torch.manual_seed(0)
    z = (0.1 * torch.randn(512, 4)).t().reshape(1, 4, 1, 1, 512)
    usage = {}
    for reg in ("none", "mpr"):
        torch.manual_seed(1)
        vq = VectorQuantizer(64, 4, regularizer=reg, init="normal", init_std=0.5)
        optimizer = torch.optim.Adam(vq.parameters(), lr=1e-2)
        for _ in range(100):
            optimizer.zero_grad()
            vq.quantize(z).loss.backward()
            optimizer.step()
        usage[reg] = codebook_stats(vq.quantize(z).indices, 64)["usage"]
    assert usage["mpr"] > usage["none"] + 0.2


def test_codebook_inits():
    assert VectorQuantizer(64, 4).codebook.weight.abs().max() <= 1 / 64  # VQGAN's
    torch.manual_seed(0)
    codebook = VectorQuantizer(1024, 16, init="normal", init_std=0.3).codebook
    assert codebook.weight.std().item() == pytest.approx(0.3, rel=0.05)
    with pytest.raises(ValueError, match="codebook init"):
        VectorQuantizer(4, 2, init="kmeans")


def test_pdr_is_kl_of_one_hot_usage():
    vq = VectorQuantizer(4, 1, regularizer="pdr")
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    z = torch.tensor([0.1, 0.2, 0.9, 2.1]).view(1, 1, 1, 1, 4)  # codes used: 0, 0, 1, 2
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    assert vq.quantize(z).terms["reg"].item() == pytest.approx(kl_to_uniform(p, vq.reg_eps).item(), rel=1e-5)


@pytest.mark.parametrize("regularizer", ["mpr", "pdr"])
def test_regularizer_gradient_reaches_encoder_and_ta(regularizer):
    """With beta = 0 the VQ loss sends no gradient to the encoder (codebook loss uses sg(z)),
    so any encoder/TA gradient below comes from the regulariser alone."""

    def grads(reg: str):
        model = tiny_model(beta=0.0, regularizer=reg)
        q = model.quantize(model.encode(torch.rand(2, 3, 4, 16, 16)))
        q.loss.backward()
        enc = model.encoder.conv_in.weight.grad
        ta = model.temporal.attention.attn.qkv.weight.grad
        return (0.0 if enc is None else enc.abs().sum().item()), (0.0 if ta is None else ta.abs().sum().item())

    enc, ta = grads(regularizer)
    assert enc > 0 and ta > 0
    assert grads("none") == (0.0, 0.0)


def test_ta_gets_gradient_from_the_full_loss():
    model = tiny_model(regularizer="none")
    x = torch.rand(2, 3, 4, 16, 16)
    out = model(x)
    ((out.reconstruction - x).abs().mean() + out.quantized.loss).backward()
    for name, p in model.temporal.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_codebook_stats():
    stats = codebook_stats(torch.tensor([0, 0, 1, 1]), 4)
    assert stats["usage"] == 0.5 and stats["perplexity"] == pytest.approx(2.0)


# -- shapes, ordering, fusions --------------------------------------------------------------------
@pytest.mark.parametrize("t", [1, 2, 3, 5])
@pytest.mark.parametrize("hw", [(16, 16), (20, 28)])
def test_any_clip_length_and_size_round_trips_in_shape(t, hw):
    model = tiny_model().eval()
    x = torch.rand(2, 3, t, *hw)
    with torch.no_grad():
        out = model(x)
    f_t, f_s = model.config.temporal_factor, model.config.spatial_factor
    assert out.reconstruction.shape == x.shape
    expected = (2, -(-t // f_t), -(-hw[0] // f_s), -(-hw[1] // f_s))
    assert out.quantized.indices_spatial.shape == expected
    assert out.quantized.indices_temporal.shape == expected


def test_batch_index_ordering_matches_single_clips():
    model = tiny_model().eval()
    clips = torch.rand(3, 3, 4, 16, 16)
    with torch.no_grad():
        batch = model(clips).quantized
        for i in range(3):
            single = model(clips[i : i + 1]).quantized
            assert torch.equal(batch.indices_spatial[i], single.indices_spatial[0])
            assert torch.equal(batch.indices_temporal[i], single.indices_temporal[0])
        # lookup from indices rebuilds exactly the fused latent the decoder saw
        assert torch.allclose(model.lookup(batch.indices_spatial, batch.indices_temporal), batch.z_q, atol=1e-6)


@pytest.mark.parametrize("mode", ["conv", "fft3d"])
def test_fusions_start_as_addition(mode):
    a, b = torch.randn(2, 8, 3, 4, 4), torch.randn(2, 8, 3, 4, 4)
    assert torch.allclose(Fusion(mode, 8)(a, b), a + b, atol=1e-5)


@pytest.mark.parametrize("layout", ["global", "factorized"])
@pytest.mark.parametrize("fusion", ["add", "conv", "fft3d"])
def test_layouts_and_fusions_train(layout, fusion):
    model = tiny_model(attn_layout=layout, fusion=fusion)
    x = torch.rand(1, 3, 3, 16, 16)
    out = model(x)
    ((out.reconstruction - x).abs().mean() + out.quantized.loss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


# -- config and export ----------------------------------------------------------------------------
def test_config_rejects_inconsistent_values():
    with pytest.raises(ConfigError, match="temporal_downsample"):
        from_dict(Stage1Config, {"ch_mult": [1, 2, 4], "temporal_downsample": [True]})
    with pytest.raises(ConfigError):
        from_dict(Stage1Config, {"regularizer": "kl"})
    assert from_dict(Stage1Config, {"ch_mult": [1, 2], "temporal_downsample": [False]}).temporal_factor == 1


def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    model = tiny_model(fusion="fft3d", regularizer="pdr")
    with torch.no_grad():  # move away from the init so the test sees trained-like values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    back = Stage1Model.from_pretrained(tmp_path)
    assert back.config == model.config
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x).reconstruction, back.eval()(x).reconstruction)


def test_from_pretrained_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Stage1Model.from_pretrained(tmp_path)


# -- the paper profile on the meta device -----------------------------------------------------------
def _conv(cin, cout, k):
    return cin * cout * k**3 + cout


def _res(cin, cout):
    return 2 * cin + _conv(cin, cout, 3) + 2 * cout + _conv(cout, cout, 3) + (_conv(cin, cout, 1) if cin != cout else 0)


def _attn(c):
    return 2 * c + _conv(c, 3 * c, 1) + _conv(c, c, 1)


def test_stcvq_layout_paper_parameters_and_flops():
    """Closed-form parameter counts per module and measured FLOPs of a 24 x 256^2 forward of
    stcvq's own layout at the paper's sizes.

    It follows the written description (2 res blocks per level in encoder and decoder,
    attention after each lowest-level block and in both middle blocks, 3x3x3 conv_out/conv_in
    at D=256): 41.3 M and 4.03 TFLOP, of which 0.93 TFLOP is the six global attentions over
    12,288 tokens. The paper profile itself is the published layout (next test)."""
    cfg = Stage1Config.paper(layout="stcvq")
    with torch.device("meta"):
        model = Stage1Model(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    widths = [32, 64, 128, 256]
    enc = _conv(3, 32, 3)
    w = 32
    for i, c in enumerate(widths):
        for _ in range(2):
            enc += _res(w, c) + (_attn(c) if i == 3 else 0)
            w = c
        enc += _conv(c, c, 3) if i < 3 else 0
    mid = 2 * _res(256, 256) + _attn(256)
    enc += mid + 2 * 256 + _conv(256, 256, 3)
    dec = _conv(256, 256, 3) + mid
    w = 256
    for i in reversed(range(4)):
        for _ in range(2):
            dec += _res(w, widths[i]) + (_attn(widths[i]) if i == 3 else 0)
            w = widths[i]
        dec += _conv(w, w, 3) if i > 0 else 0
    dec += 2 * 32 + _conv(32, 3, 3)
    assert count(model.encoder) == enc
    assert count(model.decoder) == dec
    assert count(model.temporal) == _attn(256)
    assert count(model.spatial_codebook) == count(model.temporal_codebook) == 1024 * 256
    total = count(model)
    assert total == enc + dec + _attn(256) + 2 * 1024 * 256
    assert 41e6 < total < 41.5e6, total

    x = torch.empty(1, 3, 24, 256, 256, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_flop_counts()["Global"]
    tokens = 12 * 32 * 32
    attention = 6 * 2 * (2 * tokens * tokens * 256)  # QK^T and AV of six global attention blocks
    ta = 2 * 2 * (32 * 32 * 12 * 12 * 256)  # TA: 12-frame sequences at 32x32 positions
    assert flops[torch.ops.aten.bmm] == attention + ta
    assert 4.0e12 < counter.get_total_flops() < 4.1e12


def test_paper_profile_is_the_published_network():
    """The paper profile's Stage I has the reference VQAutoEncoder3D's parameter count: the
    Stage I tensors (encoder, quantizer with TA, generator) of a published file's layout,
    39.32 M against 41.3 M for stcvq's layout at the same sizes, and its 2.95 TFLOP."""
    stage1 = ("encoder.", "quantize.", "generator.")
    reference = sum(math.prod(shape) for key, shape in layout("bfvr").items() if key.startswith(stage1))
    assert reference == 39_321_091
    assert Stage1Config.paper().layout == "reference" and Stage1Config.paper(layout="stcvq").layout == "stcvq"
    with torch.device("meta"):
        model = Stage1Model(Stage1Config.paper())
    assert sum(p.numel() for p in model.parameters()) == reference

    x = torch.empty(1, 3, 24, 256, 256, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert 2.9e12 < counter.get_total_flops() < 3.0e12
