"""stcvq.evaluation.metrics fidelity (PSNR, SSIM, LPIPS) and the result type, on hand-made inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from stcvq.evaluation.metrics import MetricResult, load_lpips_or_reason, lpips, psnr, ssim, to_json
from stcvq.evaluation.metrics.lpips import LPIPS, load_lpips
from stcvq.evaluation.metrics.weights import WeightsError, load_state_dict


def _random_video(seed: int, shape=(3, 32, 40, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ------------------------------------------------------------------ result type


def test_result_refuses_nan_inf_and_reasonless_none():
    with pytest.raises(ValueError):
        MetricResult(float("nan"))
    with pytest.raises(ValueError):
        MetricResult(float("inf"))
    with pytest.raises(ValueError):
        MetricResult(None)
    assert MetricResult(np.float32(0.5)).value == 0.5 and type(MetricResult(np.float32(0.5)).value) is float


def test_to_json_has_values_and_null_reasons():
    out = to_json({
        "psnr": MetricResult(30.0),
        "lpips": MetricResult.missing("no weights"),
        "flow": MetricResult(1.0, details={"flow_backend": "dis"}),
    })
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert back["values"] == {"psnr": 30.0, "lpips": None, "flow": 1.0}
    assert back["null_reasons"] == {"lpips": "no weights"}
    assert back["details"] == {"flow": {"flow_backend": "dis"}}


# ------------------------------------------------------------------ PSNR


def test_psnr_of_known_noise():
    # every pixel off by exactly +-10 -> MSE 100 -> 10 log10(255^2 / 100)
    reference = np.full((4, 16, 16, 3), 128, np.uint8)
    signs = np.where(np.random.default_rng(0).random(reference.shape) < 0.5, -10, 10)
    output = (reference.astype(int) + signs).astype(np.uint8)
    assert psnr(output, reference).value == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)


def test_psnr_is_the_mean_of_per_frame_values_and_identical_frames_are_capped():
    reference = np.full((2, 8, 8, 3), 100, np.uint8)
    output = reference.copy()
    output[1] += 1  # frame 1: MSE 1 -> 48.13 dB; frame 0 identical -> cap 100
    result = psnr(output, reference)
    assert result.value == pytest.approx((100.0 + 10 * math.log10(255**2)) / 2)
    assert psnr(reference, reference).value == 100.0


def test_psnr_rejects_bad_inputs():
    a = _random_video(0)
    with pytest.raises(ValueError, match="differs"):
        psnr(a, a[:, :-1])
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        psnr(a[0], a[0])


# ------------------------------------------------------------------ SSIM


def test_ssim_is_one_on_identical_videos():
    a = _random_video(1)
    assert ssim(a, a).value == pytest.approx(1.0)


def test_ssim_of_two_flat_frames_is_the_luminance_term():
    # flat images: zero variance, so contrast/structure = C2 / C2 = 1 and only the luminance
    # term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) remains, with C1 = (0.01 * 255)^2
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)
    result = ssim(np.full((2, 24, 24, 3), 100, np.uint8), np.full((2, 24, 24, 3), 150, np.uint8))
    assert result.value == pytest.approx(expected, abs=1e-9)


def test_ssim_falls_with_noise_strength():
    reference = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, None, :, None], 48, axis=1)
    reference = np.repeat(np.repeat(reference, 3, axis=3), 2, axis=0)
    rng = np.random.default_rng(0)
    values = []
    for sigma in (2, 10, 40):
        noisy = np.clip(reference + rng.normal(0, sigma, reference.shape), 0, 255).astype(np.uint8)
        values.append(ssim(noisy, reference).value)
    assert values[0] > values[1] > values[2]


def test_ssim_on_frames_smaller_than_the_window_is_missing():
    a = _random_video(2, (2, 8, 8, 3))
    result = ssim(a, a)
    assert result.value is None and "11x11" in result.reason


# ------------------------------------------------------------------ LPIPS


def _save_split_weights(model: LPIPS, folder, trunk_name: str, heads_name: str):
    """Trunk as torchvision would ship it (features.* + classifier.*), heads as lpips ships them."""
    state = model.state_dict()
    trunk = {k: v.clone() for k, v in state.items() if k.startswith("features.")}
    trunk["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    heads = {k: v.clone().contiguous() for k, v in state.items() if k.startswith("lin")}
    torch.save(trunk, folder / trunk_name)
    save_file(heads, str(folder / heads_name))
    return folder / trunk_name, folder / heads_name


def _randomise(model: LPIPS, seed: int) -> LPIPS:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 0.1)  # positive heads, like trained LPIPS
    return model


def test_lpips_without_weights_is_none_with_reason():
    model, reason = load_lpips_or_reason(None)
    a = _random_video(3)
    result = lpips(a, a, model, missing_reason=reason)
    assert result.value is None and "weights" in result.reason


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_loads_split_weights_and_scores(tmp_path, net):
    original = _randomise(LPIPS(net), seed=0)
    trunk, heads = _save_split_weights(original, tmp_path, f"{net}-trunk.pth", f"{net}-lin.safetensors")
    model, reason = load_lpips_or_reason([trunk, heads], net)
    assert reason is None
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    a, b = _random_video(4, (2, 64, 64, 3)), _random_video(5, (2, 64, 64, 3))
    assert lpips(a, a, model).value == pytest.approx(0.0, abs=1e-7)
    different = lpips(a, b, model)
    assert different.value > 0 and different.details["net"] == net
    # the per-frame distance is the network's own output, averaged over frames
    x = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert different.value == pytest.approx(float(original(x, y).mean()), rel=1e-5)


def test_lpips_loads_a_full_lpips_package_state_dict(tmp_path):
    # lpips.LPIPS().state_dict() names the trunk net.sliceK.N.* and has scaling_layer buffers
    original = _randomise(LPIPS("alex"), seed=1)
    full = {}
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    for key, value in original.state_dict().items():
        if key.startswith("features."):
            index = int(key.split(".")[1])
            full[f"net.slice{slice_of[index]}.{index}.{key.split('.')[2]}"] = value
        else:
            full[key] = value
    full["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    torch.save(full, tmp_path / "lpips_full.pth")
    model = load_lpips(tmp_path / "lpips_full.pth")
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_lpips_with_missing_heads_or_bad_file_gives_a_reason(tmp_path):
    original = LPIPS("alex")
    trunk, _ = _save_split_weights(original, tmp_path, "trunk.pth", "lin.safetensors")
    model, reason = load_lpips_or_reason([trunk], "alex")  # heads missing
    assert model is None and "lin0" in reason and "trunk.pth" in reason
    model, reason = load_lpips_or_reason(tmp_path / "nope.pth")
    assert model is None and "nope.pth" in reason


class _Payload:  # an arbitrary object: weights_only loading must refuse it
    pass


def test_weights_loader_never_unpickles_objects(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1), "x": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="evil.pth"):
        load_state_dict(tmp_path / "evil.pth")
