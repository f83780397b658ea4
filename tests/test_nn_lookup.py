"""Stage II lookup transformer: shapes, token layouts, position embeddings, paper size."""

from __future__ import annotations

import pytest
import torch
from _autograd import with_saved_bytes

from stcvq.nn.lookup import LookupConfig, LookupTransformer

TINY = dict(codebook_size=16, latent_dim=8, width=16, layers=2, heads=2, ffn=32, grid=(4, 4, 4))


@pytest.mark.parametrize("layout", ["frame", "clip"])
@pytest.mark.parametrize("t", [1, 3, 4])
def test_logits_shape(layout, t):
    model = LookupTransformer(LookupConfig(**TINY, token_layout=layout))
    logits = model(torch.randn(2, 8, t, 4, 4))
    assert logits.shape == (2, 16, t, 4, 4)


def test_frame_layout_keeps_frames_independent_and_clip_layout_mixes_them():
    torch.manual_seed(0)
    latent = torch.randn(1, 8, 3, 4, 4)
    changed = latent.clone()
    changed[:, :, 2] += 1.0  # perturb the last latent frame only
    for layout, frame0_changes in (("frame", False), ("clip", True)):
        model = LookupTransformer(LookupConfig(**TINY, token_layout=layout)).eval()
        diff = (model(latent)[:, :, 0] - model(changed)[:, :, 0]).abs().max().item()
        assert (diff > 1e-5) == frame0_changes, (layout, diff)


def test_batch_items_do_not_mix():
    model = LookupTransformer(LookupConfig(**TINY, token_layout="clip")).eval()
    latent = torch.randn(3, 8, 2, 4, 4)
    together = model(latent)
    alone = torch.cat([model(latent[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_other_grid_is_a_clear_error_unless_interpolating():
    model = LookupTransformer(LookupConfig(**TINY))
    with pytest.raises(ValueError, match="trained for a 4x4 latent grid, got 8x6"):
        model(torch.randn(1, 8, 2, 8, 6))
    interp = LookupTransformer(LookupConfig(**TINY, interpolate_positions=True))
    interp.load_state_dict(model.state_dict())
    assert interp(torch.randn(1, 8, 2, 8, 6)).shape == (1, 16, 2, 8, 6)
    # at the trained grid interpolation changes nothing
    x = torch.randn(1, 8, 2, 4, 4)
    torch.testing.assert_close(interp.eval()(x), model.eval()(x))


def test_clip_layout_refuses_more_frames_than_its_table():
    model = LookupTransformer(LookupConfig(**TINY, token_layout="clip"))
    with pytest.raises(ValueError, match="4 latent frames, got 5"):
        model(torch.randn(1, 8, 5, 4, 4))


def test_gradient_reaches_every_parameter():
    model = LookupTransformer(LookupConfig(**TINY, token_layout="clip"))
    logits = model(torch.randn(2, 8, 2, 4, 4))
    target = torch.randint(0, 16, (2, 2, 4, 4))
    torch.nn.functional.cross_entropy(logits, target).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_paper_size_parameter_count():
    with torch.device("meta"):
        bfvr = LookupTransformer(LookupConfig.paper("bfvr"))
        deflicker = LookupTransformer(LookupConfig.paper("deflicker"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    width, ffn, codes, tokens = 256, 512, 1024, 64 * 64
    per_layer = (3 * width * width + 3 * width) + (width * width + width) + 4 * width + (2 * width * ffn + ffn + width)
    fixed = tokens * width + 2 * width + width * codes  # published layout: no proj_in, head without bias
    assert count(bfvr) == fixed + 9 * per_layer  # 6.06 M
    assert count(deflicker) == fixed + 6 * per_layer


@pytest.mark.parametrize("layout", ["stcvq", "reference"])
def test_checkpointing_gives_the_same_gradients_and_keeps_fewer_activations(layout):
    config = LookupConfig(**{**TINY, "width": 8, "latent_dim": 8}, layout=layout)
    latent = torch.randn(2, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 16, (2, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = LookupTransformer(config)
    runs = []
    for checkpointing in (False, True):
        model.checkpointing = checkpointing
        model.zero_grad()
        loss, saved = with_saved_bytes(lambda: torch.nn.functional.cross_entropy(model(latent), target))
        loss.backward()
        runs.append((saved, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (saved_whole, grads), (saved_ckpt, grads_ckpt) = runs
    assert saved_ckpt < saved_whole / 2, (saved_ckpt, saved_whole)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=0, msg=name)
