"""Stage II training: index accuracy rises above chance; phased schedule; resume; shard source."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
import torch.nn.functional as F

from stcvq.nn.restorer import PROFILES, Stage2Config, Stage2Model
from stcvq.nn.vqgan import Stage1Config, Stage1Model
from stcvq.training.batches import TensorClips
from stcvq.training.loop import TrainConfig
from stcvq.training.stage2 import Stage2TrainConfig, train_stage2

pytestmark = pytest.mark.slow  # every test here trains


def _stage1() -> Stage1Model:
    torch.manual_seed(0)
    model = Stage1Model(Stage1Config.tiny())
    with torch.no_grad():  # spread the codes so the targets use many of them
        for vq in (model.spatial_codebook, model.temporal_codebook):
            vq.codebook.weight.normal_(0, 0.5)
    return model


def _clips(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Smooth random HQ clips (4 x 16^2), a brightness-flickered LQ and a noisy variant of it."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 2, 4, 4, generator=g)
    hq = F.interpolate(coarse, size=(4, 16, 16), mode="trilinear", align_corners=False)
    gain = 0.6 + 0.8 * torch.rand(n, 1, 4, 1, 1, generator=g)
    noisefree = (hq * gain).clamp(0, 1)
    lq = (noisefree + 0.03 * torch.randn(noisefree.shape, generator=g)).clamp(0, 1)
    return {"hq": hq, "lq": lq, "lq_noisefree": noisefree}


def _run(tmp_path, steps: int, noisefree_steps: int = 0, data_seed: int = 0, **train_kw):
    train_set, val_set = _clips(16, data_seed), _clips(8, 1)
    cfg = Stage2TrainConfig(
        clip_length=4, size=16, model=dataclasses.replace(PROFILES["tiny"].arch, width=32, ffn=64, layers=2),
        train=TrainConfig(**{"steps": steps, "batch_size": 4, "lr": 3e-3, "min_lr": 3e-4, "ema_decay": 0,
                             "num_samples": 0, "eval_every": 1000, "ckpt_every": 1000, "log_every": 1000,
                             "grad_clip": 1.0, **train_kw}),
        noisefree_steps=noisefree_steps)

    def data_for(lq: str) -> TensorClips:
        return TensorClips(train_set["hq"], extra={"lq": train_set[lq]})

    def val_batches():
        return [{"hq": val_set["hq"], "lq": val_set["lq"]}]

    results = train_stage2(cfg, _stage1(), data_for, tmp_path, val_batches=val_batches, has_noisefree=True)
    return results[-1].final, results


def test_short_training_lifts_index_accuracy_above_chance(tmp_path):
    model, results = _run(tmp_path, steps=60)
    first, last = results[-1].history[0], results[-1].history[-1]
    print(json.dumps({"first": first, "last": last}, indent=1))
    for name in ("spatial", "temporal"):
        # beats always answering the most frequent target code (a random Stage I's targets are
        # skewed: that share is ~15-35% here, against 1/64 for a uniform guess)
        assert last[f"val_acc_{name}"] > last[f"chance_{name}_majority"] + 0.04, (name, last)
        assert last[f"val_acc_{name}"] > 10 * last[f"chance_{name}_uniform"], (name, last)
        assert last[f"val_acc_{name}"] > first[f"val_acc_{name}"] + 0.1, (name, first, last)


def test_incremental_runs_both_phases_and_a_rerun_resumes_without_training(tmp_path):
    model, results = _run(tmp_path, steps=2, noisefree_steps=2)
    assert [r.step for r in results] == [2, 2]
    assert (tmp_path / "noisefree" / "checkpoints" / "latest").is_file()
    assert (tmp_path / "full" / "checkpoints" / "latest").is_file()
    again, results2 = _run(tmp_path, steps=2, noisefree_steps=2)  # finished: loads, trains nothing
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert results2[-1].history == results[-1].history
    # another config wipes the stale run instead of resuming it
    _run(tmp_path, steps=3, noisefree_steps=2)
    assert json.loads((tmp_path / "full" / "checkpoints" / "step_00000003" / "state.json").read_text())["step"] == 3


def test_phase_two_starts_from_phase_one_weights(tmp_path):
    model, results = _run(tmp_path, steps=1, noisefree_steps=3)
    phase1 = results[0].model
    # one step of phase 2 moved the transformers only a little away from phase 1's end
    a = phase1.spatial_transformer.head.weight
    b = model.spatial_transformer.head.weight
    assert (a - b).abs().max() < 0.05
    fresh = Stage2Model(model.config).spatial_transformer.head.weight
    assert (fresh - b).abs().max() > 0.05


def test_two_process_gloo_ddp_matches_single_process(tmp_path):
    """Both phases under torchrun-style DDP (2 processes x 2 clips) = one process x 4 clips."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).resolve().parent / "stage2_train_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, str(worker), str(tmp_path / "single")], cwd=worker.parent.parent,
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, str(worker), str(tmp_path / "ddp")], cwd=worker.parent.parent,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    a = Stage2Model.from_pretrained(tmp_path / "single" / "model").state_dict()
    b = Stage2Model.from_pretrained(tmp_path / "ddp" / "model").state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 2e-5, worst
    print("max |single - ddp| weight difference:", worst)
    torch.manual_seed(0)  # the worker's initialisation
    stage1 = Stage1Model(Stage1Config.tiny())
    torch.manual_seed(0)
    init = Stage2Model.from_stage1(stage1, Stage2Config.profile("tiny")).state_dict()
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert moved > 1e-3, moved  # and it did train


def test_a_run_left_by_other_code_starts_over(tmp_path, caplog):
    _run(tmp_path, steps=2, noisefree_steps=2)
    run_file = tmp_path / "run.json"
    recorded = json.loads(run_file.read_text())
    assert {"stcvq.training.stage2", "stcvq.nn.lookup", "stcvq.training.loop"} <= set(recorded["code"]["modules"])
    with caplog.at_level(logging.INFO):
        _run(tmp_path, steps=2, noisefree_steps=2)  # same code: resumes the finished phases
    assert "resumed from" in caplog.text and "starting over" not in caplog.text
    caplog.clear()
    # what run.json holds after a finished run of other code (same config, same Stage I)
    run_file.write_text(json.dumps({**recorded, "code": {**recorded["code"], "sha256": "0" * 64}}))
    with caplog.at_level(logging.INFO):
        _run(tmp_path, steps=2, noisefree_steps=2)
    assert "code changed since the last run, starting over" in caplog.text
    assert "resumed from" not in caplog.text
    assert json.loads(run_file.read_text()) == recorded


def test_a_run_on_other_training_data_starts_over(tmp_path, caplog):
    """New shards under the same config and Stage I model (a changed synthesize.* param) must not
    resume the finished run: that would export the old weights and score them on the new data."""
    _run(tmp_path / "run", steps=2, noisefree_steps=2)
    with caplog.at_level(logging.INFO):
        model, _ = _run(tmp_path / "run", steps=2, noisefree_steps=2, data_seed=2)
    assert "resumed from" not in caplog.text
    assert "data changed since the last run, starting over" in caplog.text
    fresh, _ = _run(tmp_path / "fresh", steps=2, noisefree_steps=2, data_seed=2)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
