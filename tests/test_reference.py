"""stcvq runs the published BFVR-STC checkpoints as the reference implementation does.

The fixtures (tests/fixtures/reference) hold what the reference implementation computed with
the weight rule's weights on a 4 x 512^2 clip (torch 2.13 CPU, float32). Tolerances reached
here (2-core x86-64 with AVX-512, torch 2.13.0 CPU): encoder output 1.4e-5 max abs, every
Stage I and Stage II index identical (low-margin tokens included), Stage I output 6.4e-6,
Stage II output 7.1e-6, logits 4.9e-6. The tests hold 1e-4 (indices: exact on every token
whose fixture margin is above 1e-3). The reference itself moves by up to 6e-6 between 1 and 2
threads.

bfvr runs every layer whole, with a forward hook per reference block to compare the trace;
deflicker runs stcvq's chunked inference path (frames in chunks with a halo), as enhance does.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from reference_fixtures import FIXTURE_CONFIG, layout, load, probes, rule_state_dict, rule_tensor

from stcvq.nn.autoencoder import Decoder3d, Encoder3d
from stcvq.nn.restorer import Stage2Config, Stage2Model
from stcvq.nn.vqgan import Stage1Model
from stcvq.published import reference

TOL = 1e-4
MARGIN = 1e-3


def _strided(x: torch.Tensor) -> np.ndarray:
    """(1, C, T, H, W) -> the fixtures' (C, T, H/4, W/4) sampling."""
    return x[0, :, :, ::4, ::4].numpy()


@pytest.mark.parametrize("task", ["bfvr", "deflicker", "deflicker-pixel"])
def test_expected_layout_equals_the_published_files(task):
    """Every key and shape the published file holds is read by stcvq, or is one of the unused ones."""
    with torch.device("meta"):
        model = Stage2Model(Stage2Config.profile("reference", task))
    expected = reference.expected_layout(reference.stage2_rules(model))
    published = layout(task)
    used = {k: s for k, s in published.items() if not k.startswith(reference.UNUSED_PREFIXES)}
    assert expected == used
    assert len(published) == {"bfvr": 588, "deflicker": 516, "deflicker-pixel": 516}[task]
    millions = sum(np.prod(s) for s in published.values()) / 1e6
    assert millions == pytest.approx(71.07 if task == "bfvr" else 67.91, abs=0.01)
    meta = {k: torch.empty(s, device="meta") for k, s in published.items()}
    assert reference.check_layout("f.pth", meta, expected) == sorted(set(published) - set(used))


@pytest.mark.parametrize("task", ["bfvr", "deflicker"])
def test_paper_profile_is_the_published_network(task):
    """The paper profile trains the published network: its weights have the published file's
    keys and shapes, tensor for tensor (only the motion residual, which has no weights, differs)."""
    with torch.device("meta"):
        model = Stage2Model(Stage2Config.profile("paper", task))
    assert model.config.motion_residual == "time"
    published = {k: s for k, s in layout(task).items() if not k.startswith(reference.UNUSED_PREFIXES)}
    assert reference.expected_layout(reference.stage2_rules(model)) == published


def test_weight_rule_matches_the_fixture_probes():
    for name in ("bfvr", "deflicker"):
        for key, first8 in probes(name).items():
            got = rule_tensor(key, layout(name)[key]).flatten()[:8].numpy()
            np.testing.assert_allclose(got, first8, rtol=0, atol=0)


class _Trace:
    """Mean and std of each reference block's output, by reference module name."""

    def __init__(self, model: Stage2Model):
        self.stats: dict[str, tuple[float, float]] = {}
        self.handles = []
        for net, name in ((model.vqgan.encoder, "encoder"), (model.vqgan.decoder, "generator")):
            for i, module in enumerate(reference._autoencoder_blocks(net)):
                self._hook(module, f"{name}.blocks.{i}")
        self._hook(model.vqgan.temporal.attention.attn, "quantize.SA")
        for transformer, branch in ((model.spatial_transformer, "s"), (model.temporal_transformer, "t")):
            last = len(transformer.blocks) - 1
            self._hook(transformer.blocks[0], f"{branch}_ft_layers.0", with_input=True)
            self._hook(transformer.blocks[last], f"{branch}_ft_layers.{last}")

    def _hook(self, module, name, with_input=False):
        def hook(_, inputs, output):
            self.stats[name] = (float(output.double().mean()), float(output.double().std()))
            if with_input:
                self.stats[f"{name}/input"] = (float(inputs[0].double().mean()), float(inputs[0].double().std()))

        self.handles.append(module.register_forward_hook(hook))

    def remove(self):
        for h in self.handles:
            h.remove()


@functools.lru_cache(maxsize=None)
def compute(task: str) -> dict:
    """The reference forward pass of one config on the fixture input, computed by stcvq."""
    model = Stage2Model(Stage2Config.profile("reference", task, clip_length=4)).eval()
    rules = reference.stage2_rules(model)
    model.load_state_dict(reference.convert(rule_state_dict(task), rules))
    whole_layers = task == "bfvr"
    if whole_layers:
        for net in (model.vqgan.encoder, model.vqgan.decoder):
            net.chunk_bytes = None
    common, fixture = load("common"), load(FIXTURE_CONFIG[task])
    x = torch.from_numpy(common["input_uint8"]).permute(3, 0, 1, 2)[None].float() / 255
    trace = _Trace(model) if whole_layers else None
    with torch.no_grad():
        z = model.vqgan.encode(x)
        stage1 = model.vqgan.quantize(z)
        out = model(x)
        restored = model.restore(x)
        if trace is not None:
            trace.remove()
        grid = (1, 2, 64, 64)
        fixture_codes = [torch.from_numpy(fixture[f"stage2_indices_{n}"].astype(np.int64)).reshape(grid)
                         for n in ("spatial", "temporal")]
        decoded = model.vqgan.decode(model.vqgan.lookup(*fixture_codes))
        stage1_output = model.vqgan.decode(stage1.z_q)
    return dict(task=task, common=common, fixture=fixture, z=z, stage1=stage1, out=out, restored=restored,
                decoded=decoded, stage1_output=stage1_output, trace=trace)


@pytest.fixture(params=[pytest.param(task, marks=pytest.mark.slow) for task in ("bfvr", "deflicker")])
def run(request):  # the full-size published networks on a 4 x 512^2 clip: minutes on a CPU
    return compute(request.param)


def test_encoder_output(run):
    np.testing.assert_allclose(_strided(run["z"]), run["common"]["encoder_output"], rtol=0, atol=TOL)


def test_stage1_indices_identical_and_output(run):
    for name in ("spatial", "temporal"):
        ours = getattr(run["stage1"], f"indices_{name}").flatten().numpy()
        assert (ours == run["common"][f"stage1_indices_{name}"]).all(), name
    np.testing.assert_allclose(_strided(run["stage1_output"]), run["common"]["stage1_output"], rtol=0, atol=TOL)


def test_stage2_indices_on_every_confident_token(run):
    fixture = run["fixture"]
    for name in ("spatial", "temporal"):
        logits = getattr(run["out"], f"logits_{name}")  # (1, N, t, h, w)
        ours = logits.argmax(1).flatten().numpy()
        confident = fixture[f"stage2_margin_{name}"] > MARGIN
        assert confident.sum() > 8000  # the check covers nearly every token, later frames included
        assert (ours[confident] == fixture[f"stage2_indices_{name}"][confident]).all(), name
        first16 = logits[0].flatten(1).t()[:16].numpy()
        np.testing.assert_allclose(first16, fixture[f"stage2_logits_{name}_first16"], rtol=0, atol=TOL)


def test_decoding_the_fixture_indices_reproduces_the_stage2_output(run):
    np.testing.assert_allclose(_strided(run["decoded"]), run["fixture"]["stage2_output"], rtol=0, atol=TOL)


def test_end_to_end_output_outside_low_margin_cells(run):
    """restore() against stage2_output, except on the 8x8 x 2-frame cells of low-margin tokens."""
    fixture = run["fixture"]
    low = np.zeros(2 * 64 * 64, dtype=bool)
    for name in ("spatial", "temporal"):
        low |= fixture[f"stage2_margin_{name}"] <= MARGIN
    cells = low.reshape(2, 64, 64).repeat(2, axis=0)  # latent frame -> its 2 frames
    keep = ~cells.repeat(2, axis=1).repeat(2, axis=2)  # latent cell = 8x8 pixels = 2x2 strided samples
    ours, theirs = _strided(run["restored"]), fixture["stage2_output"]
    assert np.abs(ours - theirs)[:, keep].max() <= TOL


@pytest.mark.slow
def test_trace_means_and_stds():
    """Per reference block, on the whole-layer bfvr run (hooks see no chunked layer)."""
    run = compute("bfvr")
    fixture, stats = run["fixture"], run["trace"].stats
    names = sorted({k.rsplit("/", 1)[0] for k in fixture if k.startswith("trace/")})
    assert len(names) == 47
    for name in names:
        mean, std = stats[name.removeprefix("trace/")]
        assert mean == pytest.approx(float(fixture[f"{name}/mean"]), abs=TOL), name
        assert std == pytest.approx(float(fixture[f"{name}/std"]), abs=TOL, rel=TOL), name


def test_reference_downsample_chunked_equals_whole():
    """The end-padded stride-2 downsample and the unactivated output norm in chunks."""
    torch.manual_seed(0)
    cfg = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, latent_dim=8, temporal_downsample=(True,), layout="reference")
    x = torch.rand(1, 3, 6, 16, 16)
    for net in (Encoder3d(3, **cfg), Decoder3d(3, **cfg)):
        net.eval()
        inp = x if isinstance(net, Encoder3d) else torch.rand(1, 8, 3, 8, 8)
        with torch.no_grad():
            net.chunk_bytes = None
            whole = net(inp)
            net.chunk_bytes = 8 * 16 * 16 * 4  # one frame of the widest map per chunk
            torch.testing.assert_close(net(inp), whole, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The importer on files in the reference's own format


@pytest.fixture(scope="module")
def bfvr_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "ckpt-bfvr.pth"
    torch.save({"params_ema": rule_state_dict("bfvr")}, path)
    return path


@pytest.mark.slow
def test_import_round_trip(bfvr_file, tmp_path):
    out = reference.import_checkpoint(bfvr_file, "bfvr", tmp_path / "bfvr")
    loaded = Stage2Model.from_pretrained(out)
    model = Stage2Model(Stage2Config.profile("reference", "bfvr"))
    model.load_state_dict(reference.convert(rule_state_dict("bfvr"), reference.stage2_rules(model)))
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    latent = torch.randn(1, 256, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.spatial_transformer(latent), model.spatial_transformer(latent),
                                   rtol=0, atol=0)
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["source_file"] == "ckpt-bfvr.pth"
    assert provenance["source_sha256"] == reference.sha256_file(bfvr_file)
    assert provenance["source_entry"] == "params_ema"
    assert set(provenance["dropped_keys"]) == {k for k in layout("bfvr") if k.startswith(reference.UNUSED_PREFIXES)}


def test_import_errors_name_the_file_and_write_nothing(tmp_path):
    missing = tmp_path / "missing.pth"  # only the first conv, under BasicSR's other entry name
    torch.save({"params": rule_state_dict("deflicker", keep=lambda k: k.startswith("encoder.blocks.0."))}, missing)
    with pytest.raises(reference.ReferenceCheckpointError,
                       match=rf"{missing}: not the expected reference layout; "
                             rf"438 missing: encoder\.blocks\.1\.conv1\.bias"):
        reference.import_checkpoint(missing, "deflicker", tmp_path / "out")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(reference.ReferenceCheckpointError, match=rf"{text}: not a PyTorch checkpoint"):
        reference.import_checkpoint(text, "bfvr", tmp_path / "out")
    code = tmp_path / "code.pth"
    torch.save({"params_ema": {"x": _Evil()}}, code)  # loading it unpickled would call print
    with pytest.raises(reference.ReferenceCheckpointError,
                       match=rf"{code}: not a tensors-only .*Unsupported global: GLOBAL print"):
        reference.import_checkpoint(code, "bfvr", tmp_path / "out")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(missing.read_bytes()[:1000])
    with pytest.raises(reference.ReferenceCheckpointError, match=rf"{truncated}: unreadable PyTorch checkpoint"):
        reference.import_checkpoint(truncated, "bfvr", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_layout_check_lists_unexpected_and_misshaped_keys():
    with torch.device("meta"):
        model = Stage2Model(Stage2Config.profile("reference", "deflicker"))
    expected = reference.expected_layout(reference.stage2_rules(model))
    state = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    state["encoder.blocks.99.weight"] = torch.empty(3, device="meta")
    state["quantize.embedding_t.weight"] = torch.empty(512, 256, device="meta")
    with pytest.raises(reference.ReferenceCheckpointError) as err:
        reference.check_layout("ckpt.pth", state, expected)
    message = str(err.value)
    assert message.startswith("ckpt.pth: ")
    assert "1 unexpected: encoder.blocks.99.weight" in message
    assert "1 mis-shaped: quantize.embedding_t.weight (512, 256) (expected (1024, 256))" in message


@pytest.mark.slow
def test_import_stage1_checkpoint(tmp_path):
    """A reference VQAutoEncoder3D file (encoder, quantize, generator) becomes a Stage I model
    folder with the same weights as the Stage II model's Stage I parts."""
    parts = ("encoder.", "quantize.", "generator.")
    path = tmp_path / "vqgan.pth"
    torch.save({"params_ema": rule_state_dict("bfvr", keep=lambda k: k.startswith(parts))}, path)
    out = reference.import_stage1_checkpoint(path, tmp_path / "stage1")
    stage1 = Stage1Model.from_pretrained(out)
    assert stage1.config.layout == "reference"
    model = Stage2Model(Stage2Config.profile("reference", "bfvr"))
    model.load_state_dict(reference.convert(rule_state_dict("bfvr"), reference.stage2_rules(model)))
    for key, value in stage1.state_dict().items():
        assert torch.equal(value, model.vqgan.state_dict()[key]), key


@pytest.mark.slow
def test_cli_downloads_from_a_local_server_then_imports(bfvr_file, tmp_path, monkeypatch):
    """`stcvq import-reference --download bfvr` against 127.0.0.1: the file lands in the user
    cache, and the imported folder records its SHA-256; a bad file is one line, exit status != 0."""
    from test_download import Server

    from stcvq.cli import main

    monkeypatch.setenv("STCVQ_CACHE", str(tmp_path / "cache"))
    server = Server({"/init/ckpt-bfvr.pth": bfvr_file.read_bytes()})
    try:
        out = tmp_path / "published-bfvr"
        argv = ["import-reference", "--download", "bfvr", "--base-url", f"{server.base}/init/", "-o", str(out)]
        assert main(argv) == 0
    finally:
        server.close()
    cached = tmp_path / "cache" / "ckpt-bfvr.pth"
    assert cached.read_bytes() == bfvr_file.read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["provenance"]["source_sha256"] == reference.sha256_file(bfvr_file)
    assert Stage2Model.from_pretrained(out).config.spatial.layout == "reference"
    bad = tmp_path / "bad.pth"
    bad.write_text("no")
    with pytest.raises(SystemExit, match=rf"^{bad}: not a PyTorch checkpoint"):
        main(["import-reference", str(bad), "--task", "bfvr", "-o", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
