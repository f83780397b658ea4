"""stcvq.evaluation.metrics temporal metrics (flicker, flow, warping error, FVD) on hand-made inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from stcvq.evaluation.metrics import (
    DISFlow,
    I3DFeatures,
    RAFTFlow,
    flicker_index,
    flow_backend,
    flow_score,
    frechet_distance,
    fvd,
    warping_error,
)
from stcvq.evaluation.metrics.temporal import consistency_mask, feature_statistics, load_i3d_or_reason, mean_luma, warp


def _texture(seed: int = 0, size: int = 160) -> np.ndarray:
    """A smooth random texture (flow needs gradients at every scale DIS looks at)."""
    noise = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(noise, (0, 0), 2)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)


def _translating(dx: int, dy: int, frames: int = 5, size: int = 64, seed: int = 0) -> np.ndarray:
    """Content moves by (+dx, +dy) pixels per frame (a window sliding the other way)."""
    big = _texture(seed)
    y0 = x0 = 48
    return np.stack([big[y0 - t * dy : y0 - t * dy + size, x0 - t * dx : x0 - t * dx + size] for t in range(frames)])


# ------------------------------------------------------------------ flicker


def test_flicker_index_is_zero_on_a_constant_video():
    assert flicker_index(np.full((6, 16, 16, 3), 90, np.uint8)).value == 0.0


def test_flicker_index_of_known_brightness_steps():
    # flat gray frames scaled by convertScaleAbs: 100 -> 120 -> 100 -> 80: steps of 20 levels
    base = np.full((16, 16, 3), 100, np.uint8)
    video = np.stack([cv2.convertScaleAbs(base, alpha=a) for a in (1.0, 1.2, 1.0, 0.8)])
    result = flicker_index(video)
    assert result.value == pytest.approx(20.0, abs=1e-9) and result.details["max_step"] == pytest.approx(20.0)


def test_flicker_index_grows_with_flicker_strength():
    clean = _translating(1, 0, frames=12)
    rng = np.random.default_rng(0)
    values = [flicker_index(clean).value]
    for spread in (0.1, 0.5):  # alpha ~ U(1 - spread, 1 + spread) on every frame with p = 0.3 (DESIGN s2)
        video = clean.copy()
        for t in range(len(video)):
            if rng.random() < 0.3 or t == 3:
                video[t] = cv2.convertScaleAbs(video[t], alpha=rng.uniform(1 - spread, 1 + spread))
        values.append(flicker_index(video).value)
    assert values[0] < 1.0 < values[1] < values[2]


def test_mean_luma_uses_bt601_weights():
    frame = np.zeros((1, 2, 2, 3), np.uint8)
    frame[..., 1] = 100
    assert mean_luma(frame)[0] == pytest.approx(58.7)


def test_flicker_index_needs_two_frames():
    assert flicker_index(np.zeros((1, 8, 8, 3), np.uint8)).value is None


# ------------------------------------------------------------------ flow


def test_dis_recovers_a_known_integer_shift():
    video = _translating(3, -2)
    flows = DISFlow()(video[:-1], video[1:])
    assert flows.shape == (4, 64, 64, 2)
    median = np.median(flows[:, 8:-8, 8:-8].reshape(-1, 2), axis=0)
    assert median == pytest.approx([3.0, -2.0], abs=0.1)


def test_flow_score_is_the_motion_magnitude():
    static = np.repeat(_texture()[None, :64, :64], 4, axis=0)
    assert flow_score(static).value < 0.05
    moving = flow_score(_translating(3, 2))
    assert moving.value == pytest.approx(np.hypot(3, 2), abs=0.25)
    assert moving.details["flow_backend"] == "dis"


def test_warp_with_an_integer_flow_moves_pixels_exactly():
    image = _texture()[:32, :32].astype(np.float32)
    flow = np.zeros((32, 32, 2), np.float32)
    flow[..., 0] = 2  # sample 2 px to the right
    warped, inside = warp(image, flow)
    np.testing.assert_array_equal(warped[:, :30], image[:, 2:])
    assert inside[:, :30].all() and not inside[:, 30:].any()


def test_consistency_mask_flags_inconsistent_flow():
    zero = np.zeros((16, 16, 2), np.float32)
    assert consistency_mask(zero, zero).all()
    forward = zero.copy()
    forward[4:8, 4:8] = 5.0  # forward says "moved", backward says "still": occluded/unreliable
    mask = consistency_mask(zero, forward)
    assert not mask[4:8, 4:8].any() and mask[:4].all()


def test_warping_error_is_near_zero_for_a_pure_translation():
    video = _translating(2, 1, frames=6)
    result = warping_error(video)
    assert result.value < 1e-3
    assert result.details["mean_valid_fraction"] > 0.8 and result.details["flow_backend"] == "dis"


def test_warping_error_with_ground_truth_flow_sees_output_flicker():
    truth = _translating(2, 1, frames=6)
    flickered = truth.copy()
    flickered[2] = cv2.convertScaleAbs(flickered[2], alpha=1.3)
    clean = warping_error(truth, flow_source=truth).value
    flicker = warping_error(flickered, flow_source=truth)
    assert flicker.details["flow_from"] == "flow_source"
    assert flicker.value > 20 * max(clean, 1e-5)


def test_warping_error_needs_two_frames():
    assert warping_error(np.zeros((1, 8, 8, 3), np.uint8)).value is None


class _TinyRAFT(torch.nn.Module):
    """Same interface as torchvision's RAFT: (image1, image2) -> list of (N, 2, H, W) flows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> list[torch.Tensor]:
        assert image1.shape[-1] % 8 == 0 and image1.shape[-2] % 8 == 0
        flow = self.conv(torch.cat([image1, image2], dim=1))
        return [flow * 0.5, flow]


def test_raft_torchscript_loads_pads_and_crops(tmp_path):
    model = _TinyRAFT()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "raft.pt"))
    backend, note = flow_backend(tmp_path / "raft.pt")
    assert isinstance(backend, RAFTFlow) and "RAFT" in note
    video = np.random.default_rng(0).integers(0, 256, (3, 21, 30, 3), dtype=np.uint8)  # not multiples of 8
    flows = backend(video[:-1], video[1:])
    assert flows.shape == (2, 21, 30, 2)
    a = F.pad(torch.from_numpy(video[:-1]).permute(0, 3, 1, 2).float() / 127.5 - 1, (0, 2, 0, 3), mode="replicate")
    b = F.pad(torch.from_numpy(video[1:]).permute(0, 3, 1, 2).float() / 127.5 - 1, (0, 2, 0, 3), mode="replicate")
    expected = model(a, b)[-1][:, :, :21, :30].permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(flows, expected, atol=1e-5)
    assert flow_score(video, backend).details["flow_backend"] == "raft"
    wrapped = RAFTFlow.from_module(model)
    np.testing.assert_allclose(wrapped(video[:-1], video[1:]), expected, atol=1e-5)


def test_flow_backend_falls_back_to_dis_and_says_why(tmp_path):
    backend, note = flow_backend(None)
    assert backend.name == "dis" and "no RAFT weights" in note
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    backend, note = flow_backend(tmp_path / "broken.pt")
    assert backend.name == "dis" and "broken.pt" in note


# ------------------------------------------------------------------ Frechet distance and FVD


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 12))
    b = rng.normal(size=(150, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    stats_a, stats_b = feature_statistics(a), feature_statistics(b)
    assert frechet_distance(*stats_a, *stats_b) == pytest.approx(_scipy_frechet(*stats_a, *stats_b), rel=1e-8)


def test_frechet_distance_of_known_gaussians():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    distance = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert distance == pytest.approx(4.0 + 1.0)
    mu, sigma = np.zeros(5), np.eye(5) * 2
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_with_rank_deficient_covariances():
    # fewer samples than dimensions, as with a small test set: still finite, >= 0, close to scipy
    rng = np.random.default_rng(1)
    stats_a, stats_b = feature_statistics(rng.normal(size=(6, 16))), feature_statistics(rng.normal(size=(6, 16)) + 1)
    value = frechet_distance(*stats_a, *stats_b)
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(_scipy_frechet(*stats_a, *stats_b), rel=1e-4)


class _TinyI3D(torch.nn.Module):
    """StyleGAN-V i3d_torchscript call signature; features = pooled conv of the clip."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=3, stride=(1, 4, 4))

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[-1] == 224 and x.shape[-2] == 224
        return torch.relu(self.conv(x)).mean(dim=(2, 3, 4))


def test_fvd_without_weights_is_none_with_reason():
    extractor, reason = load_i3d_or_reason(None)
    videos = [np.zeros((4, 16, 16, 3), np.uint8)] * 3
    result = fvd(videos, videos, extractor, missing_reason=reason)
    assert result.value is None and "I3D" in result.reason


def test_fvd_over_sets_with_a_torchscript_i3d(tmp_path):
    torch.jit.save(torch.jit.script(_TinyI3D()), str(tmp_path / "i3d_torchscript.pt"))
    extractor, reason = load_i3d_or_reason(tmp_path / "i3d_torchscript.pt")
    assert isinstance(extractor, I3DFeatures) and reason is None
    rng = np.random.default_rng(0)
    real = [_translating(1, 0, frames=8, size=32, seed=s) for s in range(4)]
    blurred = [np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in v]) for v in real]
    noisy = [np.clip(v + rng.normal(0, 60, v.shape), 0, 255).astype(np.uint8) for v in real]
    same = fvd(real, real, extractor)
    assert same.value == pytest.approx(0.0, abs=1e-6)
    assert same.details == {"real_videos": 4, "generated_videos": 4, "feature_dim": 8, "i3d_format": "torchscript"}
    assert fvd(real, noisy, extractor).value > fvd(real, blurred[:3] + real[3:], extractor).value > 0
    # it is the Frechet distance of the per-video features
    feats_r = np.stack([extractor(v) for v in real])
    feats_n = np.stack([extractor(v) for v in noisy])
    expected = frechet_distance(*feature_statistics(feats_r), *feature_statistics(feats_n))
    assert fvd(real, noisy, extractor).value == pytest.approx(expected)


def test_fvd_needs_two_videos_per_set(tmp_path):
    torch.jit.save(torch.jit.script(_TinyI3D()), str(tmp_path / "i3d.pt"))
    extractor, _ = load_i3d_or_reason(tmp_path / "i3d.pt")
    video = np.zeros((4, 16, 16, 3), np.uint8)
    assert "at least 2" in fvd([video], [video, video], extractor).reason


def test_fvd_with_a_plain_torch_inception_i3d_state_dict(tmp_path):
    from safetensors.torch import save_file

    from stcvq.evaluation.metrics.i3d import InceptionI3d

    torch.manual_seed(0)
    model = InceptionI3d()
    # as in torch<0.4 files
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "rgb_imagenet.safetensors"))
    extractor, reason = load_i3d_or_reason(tmp_path / "rgb_imagenet.safetensors")
    assert reason is None and extractor.format == "inception_i3d_state_dict"
    key = "Mixed_5c.b3b.conv3d.weight"
    assert torch.equal(extractor.model.state_dict()[key], model.state_dict()[key])
    extractor = I3DFeatures(tmp_path / "rgb_imagenet.safetensors", size=64)  # same loading, 12x cheaper than 224
    videos = [_translating(1, 0, frames=8, size=32, seed=s) for s in range(2)]
    features = extractor(videos[0])
    assert features.shape == (400,)
    with torch.inference_mode():
        expected = model(extractor.preprocess(videos[0]))[0].double().numpy()
        np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-8)
    flickered = [np.stack([cv2.convertScaleAbs(f, alpha=1.4) for f in v]) for v in videos]
    result = fvd(videos, flickered, extractor)
    assert result.value > 0 and result.details["feature_dim"] == 400


def test_i3d_same_padding_and_shapes():
    from stcvq.evaluation.metrics.i3d import InceptionI3d, _same_pad

    assert _same_pad(224, 7, 2) == (2, 3) and _same_pad(8, 3, 1) == (1, 1) and _same_pad(7, 2, 2) == (0, 1)
    with torch.inference_mode():
        assert InceptionI3d(num_classes=5)(torch.zeros(2, 3, 8, 64, 64)).shape == (2, 5)


def test_broken_i3d_file_gives_a_reason(tmp_path):
    (tmp_path / "i3d.pt").write_bytes(b"junk")
    extractor, reason = load_i3d_or_reason(tmp_path / "i3d.pt")
    assert extractor is None and "i3d.pt" in reason


# ------------------------------------------------------------------ RAFT-large port


def test_raft_port_has_torchvisions_parameter_count():
    from stcvq.evaluation.metrics.raft import RAFT

    assert sum(p.numel() for p in RAFT().parameters()) == 5_257_536  # torchvision's documented raft_large size


def test_raft_correlation_lookup_order_and_values():
    from stcvq.evaluation.metrics.raft import CorrBlock, coords_grid

    torch.manual_seed(0)
    block = CorrBlock(num_levels=2, radius=4)
    fmap1, fmap2 = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    corr = block.lookup(block.build_pyramid(fmap1, fmap2), coords_grid(1, 8, 8, torch.device("cpu")))
    assert corr.shape == (1, 2 * 81, 8, 8)
    y, x = 3, 4
    side, r = 9, 4
    # channel i * 9 + j looks at (x + offset_i, y + offset_j)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (-2, 3)):
        channel = (r + dx) * side + (r + dy)
        expected = (fmap1[0, :, y, x] * fmap2[0, :, y + dy, x + dx]).sum() / 4.0
        assert corr[0, channel, y, x] == pytest.approx(float(expected), abs=1e-5)


def test_convex_upsampling_of_a_constant_flow():
    from stcvq.evaluation.metrics.raft import upsample_flow

    flow = torch.ones(1, 2, 4, 5) * torch.tensor([1.5, -0.5]).view(1, 2, 1, 1)
    fine = upsample_flow(flow, torch.zeros(1, 576, 4, 5))
    assert fine.shape == (1, 2, 32, 40)
    # interior pixels average 9 equal neighbours; border ones see zero padding
    np.testing.assert_allclose(
        fine[0, :, 8:-8, 8:-8].numpy(), (8 * flow[0, :, :1, :1]).expand(2, 16, 24).numpy(), atol=1e-5
    )


def test_raft_state_dict_loads_through_the_flow_backend(tmp_path):
    from stcvq.evaluation.metrics.raft import RAFT

    torch.manual_seed(0)
    model = RAFT()
    torch.save(model.state_dict(), tmp_path / "raft_large_C_T_SKHT_V2.pth")
    backend, note = flow_backend(tmp_path / "raft_large_C_T_SKHT_V2.pth")
    assert isinstance(backend, RAFTFlow) and backend.format == "raft_large_state_dict"
    video = _translating(2, 1, frames=2, size=36)  # padded to 64x64 inside
    flows = backend(video[:1], video[1:])
    assert flows.shape == (1, 36, 36, 2) and np.isfinite(flows).all()
    a = F.pad(torch.from_numpy(video[:1]).permute(0, 3, 1, 2).float() / 127.5 - 1, (0, 28, 0, 28), mode="replicate")
    b = F.pad(torch.from_numpy(video[1:]).permute(0, 3, 1, 2).float() / 127.5 - 1, (0, 28, 0, 28), mode="replicate")
    with torch.inference_mode():
        expected = model(a, b)[-1][:, :, :36, :36].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(flows, expected, atol=1e-4)


def test_raft_weights_of_the_wrong_shape_fall_back_to_dis(tmp_path):
    torch.save({"feature_encoder.conv.weight": torch.zeros(3, 3, 1, 1)}, tmp_path / "raft_wrong.pth")
    backend, note = flow_backend(tmp_path / "raft_wrong.pth")
    assert backend.name == "dis" and "raft_wrong.pth" in note
