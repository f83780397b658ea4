"""BFVR (Eq. 9), brightness flicker and pixel flicker: what each draw does, and that it is recorded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from _synthesis_data import build_tiny_upscaler

from stcvq.config import ConfigError, from_dict
from stcvq.data.degrade import (
    BFVRConfig,
    BrightnessFlickerConfig,
    PixelFlickerConfig,
    SynthesisConfig,
    WeightsUnavailable,
    bfvr_degrade,
    brightness_flicker,
    clip_seed,
    draw_bfvr_params,
    make_renderer,
    pixel_flicker,
    synthesize_clip,
)
from stcvq.media.video import read_video, write_video


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def face_clip(carphone_path) -> np.ndarray:
    frames = read_video(carphone_path, stop=8)
    return np.stack([cv2.resize(f[8:136, 24:152], (64, 64), interpolation=cv2.INTER_AREA) for f in frames])


def test_crf_changes_bytes_and_psnr(face_clip, tmp_path):
    # the encoder really receives the CRF: files and quality differ (reference fault 5)
    sizes = {crf: write_video(tmp_path / f"c{crf}.mp4", face_clip, 25, crf=crf).stat().st_size for crf in (10, 40)}
    assert sizes[40] < sizes[10]
    results = {}
    for crf in (10, 40):
        cfg = BFVRConfig(blur_sigma=(0.5, 0.5), downscale=(1.0, 1.0), noise_sigma=(0.0, 0.0), crf=(crf, crf))
        lq, _, meta = bfvr_degrade(face_clip, cfg, np.random.default_rng(0))
        assert meta["params"]["crf"] == crf
        results[crf] = lq
    assert not np.array_equal(results[10], results[40])
    assert psnr(results[10], face_clip) > psnr(results[40], face_clip) + 3.0


def test_noise_field_is_drawn_per_frame(face_clip):
    static = np.repeat(face_clip[:1], 6, axis=0)  # the same frame six times
    cfg = BFVRConfig(blur_sigma=(0.5, 0.5), downscale=(1.0, 1.0), noise_sigma=(5.0, 5.0), crf=(0, 0))
    lq, lq_clean, meta = bfvr_degrade(static, cfg, np.random.default_rng(0))
    residual = lq.astype(np.float64) - lq_clean.astype(np.float64)
    assert residual.std() > 2.0  # the noise is there
    r01 = np.corrcoef(residual[0].ravel(), residual[1].ravel())[0, 1]
    assert abs(r01) < 0.3, f"noise fields of frames 0 and 1 correlate: {r01}"
    assert "per frame" in meta["noise"]


def test_noise_free_variant_shares_draws(face_clip):
    cfg = BFVRConfig(noise_sigma=(4.0, 5.0))
    lq, lq_clean, meta = bfvr_degrade(face_clip, cfg, np.random.default_rng(3))
    assert lq.shape == lq_clean.shape == face_clip.shape and lq.dtype == np.uint8
    assert not np.array_equal(lq, lq_clean)
    quiet = BFVRConfig(noise_sigma=(0.0, 0.0))
    lq, lq_clean, _ = bfvr_degrade(face_clip, quiet, np.random.default_rng(3))
    assert np.array_equal(lq, lq_clean)


def test_parameters_drawn_independently():
    rng = np.random.default_rng(0)
    draws = [draw_bfvr_params(rng, BFVRConfig()) for _ in range(400)]
    table = np.array([[d["blur_sigma"], d["downscale"], d["noise_sigma"], d["crf"]] for d in draws])
    corr = np.corrcoef(table.T)
    off_diagonal = corr[~np.eye(4, dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.2  # one shared random number would give |r| = 1
    lo, hi = table.min(axis=0), table.max(axis=0)
    assert lo[0] >= 2 and hi[0] <= 5 and lo[1] >= 2 and hi[1] <= 4 and lo[3] >= 18 and hi[3] <= 25
    assert set(table[:, 3].astype(int)) == set(range(18, 26))  # both ends inclusive


def test_consistent_vs_stochastic(face_clip):
    _, _, consistent = bfvr_degrade(face_clip, BFVRConfig(mode="consistent"), np.random.default_rng(1))
    assert isinstance(consistent["params"]["crf"], int)
    lq, _, stochastic = bfvr_degrade(face_clip, BFVRConfig(mode="stochastic"), np.random.default_rng(1))
    sigmas = stochastic["params"]["blur_sigma"]
    assert len(sigmas) == len(face_clip) and len(set(sigmas)) == len(face_clip)
    assert lq.shape == face_clip.shape


def test_odd_frame_size_and_same_seed(face_clip):
    odd = face_clip[:, :60, :58]  # not divisible by 8, odd small sides get rounded to even
    a = synthesize_clip("bfvr", odd, SynthesisConfig(), seed=7)
    b = synthesize_clip("bfvr", odd, SynthesisConfig(), seed=7)
    assert a[0]["lq"].shape == odd.shape
    assert np.array_equal(a[0]["lq"], b[0]["lq"]) and a[1] == b[1]
    assert all(s % 2 == 0 for s in a[1]["params"]["small_size"])


def test_bad_ranges_rejected():
    with pytest.raises(ConfigError, match="crf"):
        from_dict(BFVRConfig, {"crf": [30, 20]})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(SynthesisConfig, {"bfvr": {"sigma": [1, 2]}})


def test_brightness_flicker_matches_convert_scale_abs(face_clip):
    out, meta = brightness_flicker(face_clip, BrightnessFlickerConfig(probability=1.0), np.random.default_rng(0))
    assert meta["flicker_frames"] == list(range(len(face_clip)))
    for i, alpha in zip(meta["flicker_frames"], meta["alphas"]):
        assert 0.5 <= alpha <= 1.5
        assert np.array_equal(out[i], cv2.convertScaleAbs(face_clip[i], alpha=alpha, beta=0))
    never = BrightnessFlickerConfig(probability=0.0, min_frames=0)
    same, meta = brightness_flicker(face_clip, never, np.random.default_rng(0))
    assert np.array_equal(same, face_clip) and meta["flicker_frames"] == []


def test_brightness_flicker_min_frames_adds_smallest_draws(face_clip):
    """min_frames only tops up clips that drew too few hits, and never changes the other draws."""
    cfg = BrightnessFlickerConfig(probability=0.0, min_frames=2)
    out, meta = brightness_flicker(face_clip, cfg, np.random.default_rng(3))
    draws = np.random.default_rng(3).random((len(face_clip), 2))[:, 0]  # (hit draw, gain draw) per frame
    assert meta["flicker_frames"] == sorted(np.argsort(draws)[:2].tolist())
    changed = [i for i in range(len(face_clip)) if not np.array_equal(out[i], face_clip[i])]
    assert set(changed) <= set(meta["flicker_frames"]) and changed
    many, _ = brightness_flicker(face_clip, BrightnessFlickerConfig(probability=1.0, min_frames=2),
                                 np.random.default_rng(3))
    plain, _ = brightness_flicker(face_clip, BrightnessFlickerConfig(probability=1.0, min_frames=0),
                                  np.random.default_rng(3))
    assert np.array_equal(many, plain)


def test_brightness_flicker_probability():
    frames = np.full((2000, 2, 2, 3), 100, np.uint8)
    _, meta = brightness_flicker(frames, BrightnessFlickerConfig(probability=0.3), np.random.default_rng(0))
    assert abs(len(meta["flicker_frames"]) / 2000 - 0.3) < 0.04


def test_synthetic_pixel_flicker_is_per_frame_and_labelled(face_clip):
    static = np.repeat(face_clip[:1], 8, axis=0)
    cfg = PixelFlickerConfig(backend="synthetic", fraction=0.5)
    out, meta = pixel_flicker(static, cfg, np.random.default_rng(0))
    chosen = meta["rerendered_frames"]
    assert len(chosen) == 4 and "NOT Stable Diffusion" in meta["backend_label"]
    untouched = [i for i in range(8) if i not in chosen]
    assert all(np.array_equal(out[i], static[i]) for i in untouched)
    assert all(not np.array_equal(out[i], static[i]) for i in chosen)
    # re-rendering the same input gives a different frame each time: that is the flicker
    assert not np.array_equal(out[chosen[0]], out[chosen[1]])
    assert psnr(out[chosen[0]], static[0]) > 18  # still the same face


def test_missing_weights_stop_with_a_clear_message(tmp_path):
    cfg = PixelFlickerConfig(backend="diffusers", model=str(tmp_path / "no-such-model"))
    with pytest.raises(WeightsUnavailable, match="backend: synthetic"):
        make_renderer(cfg)


def test_diffusers_backend_with_tiny_random_pipeline(face_clip, tmp_path):
    folder = build_tiny_upscaler(tmp_path / "tiny-sd-x4")
    cfg = PixelFlickerConfig(backend="diffusers", model=str(folder), fraction=0.25, num_inference_steps=2)
    renderer = make_renderer(cfg)  # the same loading code the stage uses
    assert type(renderer.pipe).__name__ == "StableDiffusionUpscalePipeline"
    out, meta = pixel_flicker(face_clip, cfg, np.random.default_rng(0), renderer)
    assert meta["backend"] == "diffusers" and str(folder) in meta["backend_label"]
    chosen = meta["rerendered_frames"]
    assert len(chosen) == 2 and out.shape == face_clip.shape and out.dtype == np.uint8
    assert all(not np.array_equal(out[i], face_clip[i]) for i in chosen)
    assert all(np.array_equal(out[i], face_clip[i]) for i in range(8) if i not in chosen)
    again, _ = pixel_flicker(face_clip, cfg, np.random.default_rng(0), renderer)
    assert np.array_equal(out, again)  # seeded generator: reproducible


def test_clip_seed_depends_on_all_inputs():
    assert clip_seed(0, "bfvr", "a-000000") == clip_seed(0, "bfvr", "a-000000")
    seeds = {clip_seed(0, "bfvr", "a"), clip_seed(1, "bfvr", "a"), clip_seed(0, "deflicker", "a"),
             clip_seed(0, "bfvr", "b")}
    assert len(seeds) == 4


def test_blur_sigma_scales_with_reference_size(face_clip):
    # the same draws; a 512 reference blurs a 64^2 clip 8x less, so it stays closer to the HQ
    base = dict(blur_sigma=(4.0, 4.0), downscale=(1.0, 1.0), noise_sigma=(0.0, 0.0), crf=(10, 10))
    as_is, _, meta = bfvr_degrade(face_clip, BFVRConfig(**base), np.random.default_rng(0))
    scaled, _, scaled_meta = bfvr_degrade(face_clip, BFVRConfig(**base, sigma_reference_size=512),
                                          np.random.default_rng(0))
    assert meta["blur_sigma_applied_scale"] == 1.0 and scaled_meta["blur_sigma_applied_scale"] == 0.125
    assert psnr(scaled, face_clip) > psnr(as_is, face_clip) + 3.0
