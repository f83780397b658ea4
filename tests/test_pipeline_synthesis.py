"""End to end: `dvc repro` up to the synthesis stages in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["bfvr", "deflicker", "deflicker-pixel"]


def dvc(repo: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    if "motion" not in stages or "synthesize" not in stages:
        pytest.skip("the curation stages are not in dvc.yaml yet")
    copy = tmp_path_factory.mktemp("repo") / "stcvq"
    ignore = shutil.ignore_patterns(".venv", ".git", "data", "metrics", "cache", "tmp", "dvc.lock", "__pycache__", "*.egg-info", ".pytest_cache")
    shutil.copytree(ROOT, copy, ignore=ignore)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    return copy


@pytest.mark.slow
def test_repro_builds_shards_and_second_run_does_nothing(repo):
    dvc(repo, "repro", "synthesize")
    clips = json.loads((repo / "metrics/clips.json").read_text())
    assert clips["split_mode"] == "time" and all(clips["clips"][s] > 0 for s in ("train", "val", "test"))
    from stcvq.shards import make_loader

    for task in TASKS:
        summary = json.loads((repo / f"metrics/synthesis-{task}.json").read_text())
        assert summary["clips"] == clips["clips"] and summary["skipped"] == []
        assert (repo / f"data/shards/{task}/train-{task}-000000.tar").exists()
        batch = next(iter(make_loader(repo / f"data/shards/{task}/train-{task}.json", batch_size=2)))
        assert batch["hq"].shape == batch["lq"].shape == (2, 3, 8, 64, 64)
    assert "NOT Stable Diffusion" in json.loads((repo / "metrics/synthesis-deflicker-pixel.json").read_text())["backend"]

    again = dvc(repo, "repro", "synthesize")
    assert "Running stage" not in again, again

    # one task's params changed: only that task runs again
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("    probability: 0.3\n", "    probability: 0.5\n", 1))
    third = dvc(repo, "repro", "synthesize")
    assert "Running stage 'synthesize@deflicker'" in third
    assert "Running stage 'synthesize@bfvr'" not in third and "Running stage 'clips'" not in third
