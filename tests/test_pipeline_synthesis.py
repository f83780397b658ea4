"""End to end: `dvc repro` up to the synthesis stages in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _dvc_stages import copy_working_tree, stage_args

TASKS = ["bfvr", "deflicker", "deflicker-pixel"]


def dvc(repo: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    copy = copy_working_tree(tmp_path_factory.mktemp("repo") / "stcvq")
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    # DVCLive (training stages) fails in a git repository without a commit ("Empty git repo")
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "copy"],
                   cwd=copy, check=True)
    return copy


@pytest.mark.slow
def test_repro_builds_shards_and_second_run_does_nothing(repo):
    dvc(repo, "repro", "synthesize")
    clips = json.loads((repo / "metrics/clips.json").read_text())
    assert clips["split_mode"] == "time" and all(clips["clips"][s] > 0 for s in ("train", "val", "test"))
    from stcvq.data.shards import make_loader

    for task in TASKS:
        summary = json.loads((repo / f"metrics/synthesis-{task}.json").read_text())
        assert summary["clips"] == clips["clips"] and summary["skipped"] == []
        assert (repo / f"data/shards/{task}/train-{task}-000000.tar").exists()
        batch = next(iter(make_loader(repo / f"data/shards/{task}/train-{task}.json", batch_size=2)))
        assert batch["hq"].shape == batch["lq"].shape == (2, 3, 8, 64, 64)
    pixel = json.loads((repo / "metrics/synthesis-deflicker-pixel.json").read_text())
    assert "NOT Stable Diffusion" in pixel["backend"]

    again = dvc(repo, "repro", "synthesize")
    assert "Running stage" not in again, again

    # one task's params changed: only that task runs again
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("    probability: 0.3\n", "    probability: 0.5\n", 1))
    third = dvc(repo, "repro", "synthesize")
    assert "Running stage 'synthesize@deflicker'" in third
    assert "Running stage 'synthesize@bfvr'" not in third and "Running stage 'clips'" not in third


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_training_stage_scripts_under_torchrun(repo):
    """The stage1 and stage2 scripts as two gloo processes: rank 0 alone exports the model and
    the metrics (rank 1 used to race it deleting and rewriting models/), and both finish."""
    dvc(repo, "repro", "synthesize")  # nothing to do when the test above has run
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for stage in ("stage1", "stage2"):
        params[stage]["train"].update(steps=4, batch_size=4, eval_every=2, ckpt_every=2, log_every=2)
    params["stage2"]["noisefree_steps"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2",
                "--master_port", str(_free_port())]
    for module in (stage_args("stage1", repo), stage_args("stage2", repo, item="bfvr")):
        proc = subprocess.run([*torchrun, *module], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{module} under torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    stage1 = json.loads((repo / "metrics/stage1.json").read_text())
    stage2 = json.loads((repo / "metrics/stage2-bfvr.json").read_text())
    assert stage1["step"] == 4 and stage2["step"] == 4
    assert (repo / "models/stage1/model.safetensors").exists()
    assert (repo / "models/stage2-bfvr/model.safetensors").exists()
    assert not list((repo / "models").glob(".stage2-*"))  # no staging folder left behind
