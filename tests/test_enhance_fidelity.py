"""--fidelity: Stage2Model.restore's blend of the looked-up codes with the LQ encoder's latent,
on a random tiny model and on the pipeline's trained bfvr model (after `make repro`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stcvq.config import ConfigError
from stcvq.media import video
from stcvq.media.frames import frames_to_tensor
from stcvq.nn.restorer import Stage2Config, Stage2Model

TRAINED = Path(__file__).resolve().parents[1] / "models" / "stage2-bfvr"  # `make repro` writes it; CI has none
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _random_model() -> Stage2Model:
    """A random tiny model whose codes sit at its latents' scale, as training puts them (VQGAN's
    uniform init keeps every code within 1/N of the origin, where any w > 0 is all z_l)."""
    torch.manual_seed(0)
    model = Stage2Model(Stage2Config.profile("tiny")).eval()
    with torch.no_grad():
        scale = float(model(torch.rand(1, 3, model.clip_length, model.size, model.size)).latent.std())
        for quantizer in (model.vqgan.spatial_codebook, model.vqgan.temporal_codebook):
            torch.nn.init.normal_(quantizer.codebook.weight, 0.0, scale)
    return model


def _carphone_clip(path: Path, model: Stage2Model) -> torch.Tensor:
    import cv2

    frames = [cv2.resize(f[:, 16:160], (model.size, model.size), interpolation=cv2.INTER_AREA)
              for f in video.read_frames(path, stop=model.clip_length)]
    return frames_to_tensor(frames)[None]


def _models() -> list:
    models = [pytest.param(_random_model, id="random-tiny")]
    trained = pytest.mark.skipif(not (TRAINED / "model.safetensors").is_file(), reason=f"{TRAINED} not here")
    models.append(pytest.param(lambda: Stage2Model.from_pretrained(TRAINED), id="trained-bfvr", marks=trained))
    return models


@pytest.mark.parametrize("make_model", _models())
def test_fidelity_ends_and_monotonic_change(make_model, carphone_path):
    model = make_model()
    clips = _carphone_clip(carphone_path, model)
    with torch.no_grad():
        # w = 0 is the restore before the knob existed: indices, lookup, decode
        spatial, temporal = model.predict_indices(clips)
        codes = model.vqgan.decode(model.vqgan.lookup(spatial, temporal), tuple(clips.shape[-3:])).clamp(0, 1)
        latent = model(clips).latent
        encoder_only = model.vqgan.decode(latent, tuple(clips.shape[-3:])).clamp(0, 1)
        outputs = [model.restore(clips, fidelity=w) for w in WEIGHTS]
    assert torch.equal(model.restore(clips), codes)  # the default: bit-identical
    assert torch.equal(outputs[0], codes)
    torch.testing.assert_close(outputs[-1], encoder_only, rtol=0, atol=1e-6)  # w = 1: the LQ latent decoded
    change = [float((out - codes).abs().mean()) for out in outputs]
    assert change[0] == 0 and change[-1] > 0.005  # the two ends differ visibly (> 1.3 grey levels)
    assert all(a < b for a, b in zip(change, change[1:])), change


def test_fidelity_out_of_range_is_one_error(carphone_path):
    model = _random_model()
    clips = torch.rand(1, 3, model.clip_length, model.size, model.size)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="fidelity must be in 0..1"):
            model.restore(clips, fidelity=bad)
