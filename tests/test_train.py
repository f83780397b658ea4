"""The shared training loop: schedule, state files, NaN guard, kill -9 resume, two-process DDP."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from stcvq.config import ConfigError, from_dict
from stcvq.training.batches import TensorClips
from stcvq.training.loop import (
    BatchStream,
    StepOutput,
    TrainConfig,
    TrainingHooks,
    load_state,
    lr_factor,
    save_state,
    train,
)

WORKER = Path(__file__).resolve().parent / "stage1_train_worker.py"
ROOT = WORKER.parent.parent


def run_worker(out: Path, *args: str, env: dict | None = None, worker: Path = WORKER) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(worker), str(out), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    checkpoints = out / "checkpoints"
    return load_file(str(checkpoints / (checkpoints / "latest").read_text().strip() / "model.safetensors"))


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    factors = [lr_factor(s, cfg) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(0.1)
    assert all(a >= b - 1e-12 for a, b in zip(factors[10:], factors[11:]))  # monotone decay


def test_state_files_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    np.random.seed(5)
    state = {"opt": opt.state_dict(), "numpy": np.random.get_state(), "tuple": (1, 2.5, None), "inf": float("inf")}
    save_state(tmp_path, "s", state)
    back = load_state(tmp_path, "s")
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    opt2.load_state_dict(back["opt"])
    assert opt2.param_groups[0]["lr"] == 1e-3 and tuple(opt2.param_groups[0]["betas"]) == (0.9, 0.99)
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(opt2.state_dict()["state"][0][k], opt.state_dict()["state"][0][k])
    assert back["tuple"] == (1, 2.5, None) and back["inf"] == float("inf")
    np.random.set_state(back["numpy"])
    a = np.random.rand()
    np.random.seed(5)
    assert a == np.random.rand()


class NaNAtStep:
    """A linear 'generator' whose loss is NaN on its second call."""

    def __init__(self):
        self.model = torch.nn.Linear(4, 4)
        self.discriminator = None
        self.calls = 0

    def step(self, model, batch):
        self.calls += 1
        loss = (model(batch["hq"]) - batch["hq"]).pow(2).mean()
        if self.calls == 2:
            loss = loss * float("nan")
        return StepOutput(loss, {})

    def evaluate(self, model, batches):
        return {}

    def samples(self, model, batch):
        return {}


def test_nan_guard_skips_the_update(tmp_path):
    objective = NaNAtStep()
    cfg = TrainConfig(steps=3, batch_size=2, lr=1e-2, min_lr=1e-3, ema_decay=0, ckpt_every=100)
    result = train(objective, TensorClips(torch.randn(8, 4)), cfg, tmp_path)
    assert result.bad_steps == 1
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.slow
def test_kill9_mid_run_then_resume_matches_uninterrupted(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    args = ("--steps", "7", "--batch", "4", "--accum", "2")
    done = run_worker(straight, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_worker(crashed, *args, "--kill-at", "5")
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL after step 5; last checkpoint: step 4
    assert (crashed / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    resumed = run_worker(crashed, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = final_weights(straight), final_weights(crashed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the exported EMA models agree too
    ea = load_file(str(straight / "model" / "model.safetensors"))
    eb = load_file(str(crashed / "model" / "model.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


@pytest.mark.slow
def test_killed_run_resumes_under_the_same_code_and_starts_over_under_changed_code(tmp_path):
    """run.json covers the code Stage I runs: an edited module must not resume old checkpoints."""
    code = tmp_path / "code"  # a private copy of the package, so the test can edit it
    shutil.copytree(ROOT / "stcvq", code / "stcvq", ignore=shutil.ignore_patterns("__pycache__"))
    (code / "tests").mkdir()
    worker = Path(shutil.copy(WORKER, code / "tests" / WORKER.name))  # it imports stcvq from its parent folder
    out, args = tmp_path / "run", ("--steps", "4", "--batch", "4")
    killed = run_worker(out, *args, "--kill-at", "3", worker=worker)
    assert killed.returncode == -9, killed.stderr[-3000:]
    before = json.loads((out / "run.json").read_text())["code"]
    assert {"stcvq.training.stage1", "stcvq.training.loop", "stcvq.nn.vqgan", "stcvq.nn.losses",
            "stcvq.training.batches"} <= set(before["modules"])
    assert "stcvq.data.curate.text" not in before["modules"]

    resumed = run_worker(out, *args, worker=worker)  # same code: carries on from the step-2 checkpoint
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "starting over" not in resumed.stderr

    losses = code / "stcvq" / "nn" / "losses.py"
    losses.write_text(losses.read_text() + "\n# an edit\n")
    changed = run_worker(out, *args, worker=worker)  # the finished run was trained by other code
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "code changed since the last run, starting over" in changed.stderr
    assert "resumed from" not in changed.stderr
    after = json.loads((out / "run.json").read_text())["code"]
    assert after["modules"] == before["modules"] and after["sha256"] != before["sha256"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    args = ("--steps", "4", "--batch", "4", "--no-resume")
    done = run_worker(single, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(ddp), *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    a, b = final_weights(single), final_weights(ddp)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 2e-5, worst  # the runs differ only in float summation order
    # and the runs did train: weights moved away from the (seeded) initialisation
    sys.path.insert(0, str(WORKER.parent))
    from stage1_train_worker import tiny_config

    from stcvq.nn.vqgan import Stage1Model

    cfg = tiny_config(4, 4, 1)
    torch.manual_seed(cfg.train.seed)
    init = Stage1Model(cfg.model).state_dict()
    moved = max((a[k] - init[k]).abs().max().item() for k in a)
    assert moved > 1e-3, moved


def _tiny_stage1(regularizer: str = "mpr"):
    from stcvq.nn.vqgan import Stage1Config
    from stcvq.training.stage1 import Stage1LossConfig, Stage1TrainConfig

    return Stage1TrainConfig(
        model=Stage1Config.tiny(regularizer=regularizer),
        loss=Stage1LossConfig(perceptual_weight=0.0, discriminator=None),
        train=TrainConfig(steps=2, batch_size=2, eval_every=1, ckpt_every=1, ema_decay=0.0, log_every=1),
    )


@pytest.mark.slow
def test_changed_config_or_data_starts_over_instead_of_resuming(tmp_path, caplog):
    """An ablation (another regulariser) or new shards must not resume the previous run's
    finished checkpoints."""
    from stcvq.training.stage1 import train_stage1

    def run(regularizer, data_seed=0):
        clips = torch.rand(4, 3, 2, 16, 16, generator=torch.Generator().manual_seed(data_seed))
        return train_stage1(_tiny_stage1(regularizer), TensorClips(clips), tmp_path,
                            val_batches=lambda: [{"hq": clips[:2]}])

    def weights(result):
        return torch.cat([p.detach().flatten() for p in result.model.parameters()])

    first = weights(run("mpr"))
    again = weights(run("mpr"))  # same config: resumes the finished run, trains nothing
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    other = weights(run("none"))  # another config: must start over, not load the mpr run
    assert not torch.equal(other, first)
    assert '"none"' in (tmp_path / "run.json").read_text()
    with caplog.at_level(logging.INFO):
        new_data = weights(run("none", data_seed=1))
    assert "data changed since the last run, starting over" in caplog.text and "resumed from" not in caplog.text
    assert not torch.equal(new_data, other)


def test_dvclive_writes_the_runs_own_dvc_yaml_and_never_the_repositorys(tmp_path, monkeypatch):
    """Training metrics and the exported model artifact land in the run folder's dvc.yaml; the
    repository's root dvc.yaml (the pipeline and its artifacts) keeps its bytes."""
    from dvc.repo import Repo

    from stcvq.training.loop import export_model
    from stcvq.training.stage1 import train_stage1

    Repo.init(str(tmp_path), no_scm=True)
    root_yaml = tmp_path / "dvc.yaml"
    root_yaml.write_text("stages:\n  train:\n    cmd: echo\nartifacts:\n  stage1:\n    path: models/stage1\n"
                         "    type: model\n")
    before = root_yaml.read_bytes()
    monkeypatch.chdir(tmp_path)  # DVCLive finds the repository from the working directory
    run = tmp_path / "runs" / "stage1"
    result = train_stage1(_tiny_stage1(), TensorClips(torch.rand(4, 3, 2, 16, 16)), run)
    export_model(result.final, tmp_path / "models" / "stage1", run / "dvclive", name="stage1",
                 description="a tiny Stage I", labels=["stage1"])
    assert root_yaml.read_bytes() == before
    run_yaml = yaml.safe_load((run / "dvc.yaml").read_text())
    assert run_yaml["metrics"] == ["dvclive/metrics.json"]
    assert run_yaml["artifacts"]["stage1"] == {"path": "../../models/stage1", "type": "model",
                                               "desc": "a tiny Stage I", "labels": ["stage1"]}
    assert (tmp_path / "models" / "stage1" / "model.safetensors").is_file()
    assert not (tmp_path / "models" / "stage1.dvc").exists()  # recorded, not cached: DVC's stage outputs do that


def test_dvclive_logs_system_metrics_on_cpu_offline(tmp_path, caplog):
    """CPU and RAM use reach the run's DVCLive curves every 2 s, also where NVML has no driver
    to talk to (dvclive would otherwise fail every sample on it and log nothing)."""
    from stcvq.training.loop import _Logger

    folder = tmp_path / "dvclive"
    logger = _Logger(folder, resume=False)
    cpu = folder / "plots" / "metrics" / "system" / "cpu" / "usage (%).tsv"
    try:
        deadline = time.time() + 30
        while not cpu.is_file() and time.time() < deadline:
            time.sleep(0.5)
    finally:
        logger.close()
    assert cpu.is_file(), sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.tsv"))
    assert (folder / "plots" / "metrics" / "system" / "ram" / "usage (GB).tsv").is_file()
    assert "Failed to monitor" not in caplog.text


class Linear(TrainingHooks):
    """A linear 'generator' that records what the loop did around it."""

    def __init__(self, model: torch.nn.Module | None = None):
        self.model = model if model is not None else torch.nn.Linear(4, 4)
        self.autocast: list[bool] = []
        self.updates: list[int] = []
        self.loaded: list[dict] = []

    def step(self, model, batch):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return StepOutput((model(batch["hq"]) - batch["hq"]).pow(2).mean(), {})

    def evaluate(self, model, batches):
        return {}

    def samples(self, model, batch):
        return {}

    def after_update(self, step):
        self.updates.append(step)
        return {"hook": float(step)}

    def state_dict(self):
        return {"updates": torch.tensor(self.updates)}

    def load_state_dict(self, state):
        self.loaded.append(state)
        self.updates = state["updates"].tolist()


def _linear_config(**overrides) -> TrainConfig:
    return TrainConfig(**{"steps": 3, "batch_size": 2, "lr": 1e-2, "min_lr": 1e-3, "ema_decay": 0, "ckpt_every": 100,
                          **overrides})


def test_batch_stream_resumes_mid_epoch_and_moves_to_the_next_epoch():
    source = TensorClips(torch.arange(5.0).view(5, 1), seed=1)  # two batches of 2 per epoch, one clip left over
    stream = BatchStream(source, 2, torch.device("cpu"))
    seen = [stream.next()["hq"] for _ in range(3)]
    assert stream.state_dict() == {"epoch": 1, "consumed": 1}
    first_epochs = [b["hq"] for e in (0, 1) for b in source.batches(e, 0, 1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(seen, first_epochs))
    resumed = BatchStream(source, 2, torch.device("cpu"))
    resumed.load_state_dict(stream.state_dict())
    assert torch.equal(resumed.next()["hq"], stream.next()["hq"])
    with pytest.raises(RuntimeError, match="yields no batch of 2 clips for rank 0 of 1"):
        BatchStream(TensorClips(torch.zeros(1, 1)), 2, torch.device("cpu")).next()


def test_objective_hooks_run_after_each_update_and_their_state_is_checkpointed(tmp_path):
    first = Linear()
    train(first, TensorClips(torch.randn(8, 4)), _linear_config(steps=2, ckpt_every=1), tmp_path)
    assert first.updates == [0, 1] and first.loaded == []
    again = Linear()
    result = train(again, TensorClips(torch.randn(8, 4)), _linear_config(steps=3, ckpt_every=1), tmp_path)
    assert again.loaded and again.loaded[0]["updates"].tolist() == [0, 1]  # from the step-2 checkpoint
    assert again.updates == [0, 1, 2] and result.step == 3


def test_precision_auto_is_fp32_on_cpu_and_bf16_autocasts_there(tmp_path):
    auto, bf16 = Linear(), Linear()
    train(auto, TensorClips(torch.randn(8, 4)), _linear_config(), tmp_path / "auto")
    train(bf16, TensorClips(torch.randn(8, 4)), _linear_config(precision="bf16"), tmp_path / "bf16")
    assert auto.autocast == [False] * 3 and bf16.autocast == [True] * 3


def _weights_after(impl: str, tmp_path) -> torch.Tensor:
    torch.manual_seed(0)
    data = TensorClips(torch.randn(8, 4), seed=2)
    result = train(Linear(), data, _linear_config(optimizer_impl=impl), tmp_path / impl)
    return torch.cat([p.detach().flatten() for p in result.model.parameters()])


def test_optimizer_impls_agree_and_auto_is_torchs_cpu_default(tmp_path):
    auto = _weights_after("auto", tmp_path)
    assert torch.equal(auto, _weights_after("for-loop", tmp_path))  # torch picks the for-loop AdamW on CPU
    for impl in ("foreach", "fused"):  # fused AdamW runs on CPU in this torch
        torch.testing.assert_close(_weights_after(impl, tmp_path), auto, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="optimizer_impl"):
        from_dict(TrainConfig, {"optimizer_impl": "fast"})


class Checkpointable(torch.nn.Linear):
    def __init__(self):
        super().__init__(4, 4)
        self.checkpointing = False

    def set_activation_checkpointing(self, on: bool) -> None:
        self.checkpointing = on


def test_activation_checkpointing_is_switched_on_or_named_when_unsupported(tmp_path):
    objective = Linear(Checkpointable())
    train(objective, TensorClips(torch.randn(8, 4)), _linear_config(activation_checkpointing=True), tmp_path / "a")
    assert objective.model.checkpointing
    with pytest.raises(ConfigError, match="activation_checkpointing: Linear has no set_activation_checkpointing"):
        train(Linear(), TensorClips(torch.randn(8, 4)), _linear_config(activation_checkpointing=True), tmp_path / "b")
