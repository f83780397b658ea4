"""DVC as its users use it, with the installed dvc: it accepts dvc.yaml (schema, interpolation,
the evaluate matrix), the evaluate matrix expands to every task x model x test set in params,
the `artifacts:` section lets the model registry fetch each model folder by name, and queued
experiments (the README's ablation sweeps) run and show up in `dvc exp show`."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _dvc_stages import ROOT, stages

from stcvq.tasks import TASKS

BIN = Path(sys.executable).parent  # the interpreter running the tests has dvc and gto beside it
GIT_USER = ["-c", "user.name=test", "-c", "user.email=test@example.com"]


def run(cwd: Path, *args: str) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def dvc_copy(tmp_path) -> Path:
    """A DVC project holding this repository's dvc.yaml and params.yaml only."""
    if not (BIN / "dvc").exists():
        pytest.skip(f"dvc is not installed beside {sys.executable}")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    run(tmp_path, "git", "init", "-q")
    run(tmp_path, str(BIN / "dvc"), "init", "-q")
    return tmp_path


def stage_names(repo: Path) -> list[str]:
    return [line.split()[0] for line in run(repo, str(BIN / "dvc"), "stage", "list").splitlines() if line.strip()]


def test_dvc_expands_the_evaluate_matrix_from_params(dvc_copy):
    names = stage_names(dvc_copy)
    assert sorted(n for n in names if n.startswith("evaluate@")) == sorted(f"evaluate@{t}-stage2-test" for t in TASKS)
    assert {"stage1", *(f"stage2@{t}" for t in TASKS)} <= set(names)  # the artifacts section is valid beside them

    params = yaml.safe_load((dvc_copy / "params.yaml").read_text())
    params["evaluate"]["models"] = ["stage2", "published"]
    params["evaluate"]["testsets"]["vfhq"] = {"lq_dir": "/data/vfhq/{task}/lq", "gt_dir": "/data/vfhq/gt"}
    (dvc_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    evaluate = sorted(n for n in stage_names(dvc_copy) if n.startswith("evaluate@"))
    assert evaluate == sorted(f"evaluate@{t}-{m}-{s}" for t in TASKS for m in ("stage2", "published")
                              for s in ("test", "vfhq"))
    # one entry as DVC resolves it: its own model folder, metrics file and test set param
    status = json.loads(run(dvc_copy, str(BIN / "dvc"), "status", "--json", "evaluate@deflicker-published-vfhq"))
    changed = [c for entry in status["evaluate@deflicker-published-vfhq"] for c in entry.get("changed deps", {})]
    assert "models/published-deflicker" in changed and "data/shards/deflicker" in changed


def test_artifacts_name_every_model_folder_a_stage_writes():
    from dvc.repo.artifacts import name_is_compatible

    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    outs = set()
    for stage in stages().values():
        template = stage.get("do", stage)
        for item in stage.get("foreach", [None]):
            for out in template.get("outs", []):
                path = next(iter(out)) if isinstance(out, dict) else out
                outs.add(path if item is None else path.replace("${item}", item))
    model_outs = {p for p in outs if p.startswith("models/")}
    assert model_outs == {"models/stage1", *(f"models/stage2-{t}" for t in TASKS)}
    assert {a["path"] for a in artifacts.values()} == model_outs
    for name, artifact in artifacts.items():
        assert name_is_compatible(name) and name == Path(artifact["path"]).name
        assert artifact["type"] == "model" and artifact["desc"].strip() and artifact["labels"]


def test_dvc_artifacts_get_fetches_a_registered_model(tmp_path):
    """The registry path a user takes: `gto register` tags a commit, `dvc artifacts get` fetches
    the folder from the DVC remote. A one-line stage writes the model folders in place of training."""
    if not (BIN / "dvc").exists():
        pytest.skip(f"dvc is not installed beside {sys.executable}")
    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    folders = [a["path"] for a in artifacts.values()]
    repo = tmp_path / "repo"
    repo.mkdir()
    write = "; ".join(f"os.makedirs('{p}'); open('{p}/config.json', 'w').write('{Path(p).name}')" for p in folders)
    dvc_yaml = {"stages": {"train": {"cmd": f'python -c "import os; {write}"', "outs": folders}},
                "artifacts": artifacts}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    dvc = str(BIN / "dvc")
    run(repo, "git", "init", "-q")
    run(repo, dvc, "init", "-q")
    run(repo, dvc, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    run(repo, dvc, "repro", "-q")
    run(repo, dvc, "push", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", *GIT_USER, "commit", "-q", "-m", "models")
    run(repo, "git", *GIT_USER, "tag", "-a", "stage2-deflicker@v0.0.1", "-m", "Registering stage2-deflicker v0.0.1")
    got = tmp_path / "got"
    run(tmp_path, dvc, "artifacts", "get", str(repo), "stage2-deflicker", "-o", str(got))
    assert (got / "config.json").read_text() == "stage2-deflicker"


@pytest.mark.slow
def test_queued_experiments_run_and_show_up(tmp_path):
    """`dvc exp run --queue -S ...` twice, `dvc queue start`, then both in `dvc exp show`: the
    README's sweep mechanism on a one-stage project (a param squared), about 30 s."""
    if not (BIN / "dvc").exists():
        pytest.skip(f"dvc is not installed beside {sys.executable}")
    dvc = str(BIN / "dvc")
    (tmp_path / "params.yaml").write_text("x: 0\n")
    square = ("import json, yaml; x = yaml.safe_load(open('params.yaml'))['x']; "
              "json.dump({'square': x * x}, open('m.json', 'w'))")
    dvc_yaml = {"stages": {"square": {"cmd": f'python -c "{square}"', "params": ["x"],
                                      "metrics": [{"m.json": {"cache": False}}]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    run(tmp_path, "git", "init", "-q")
    run(tmp_path, dvc, "init", "-q")
    run(tmp_path, "git", "add", "-A")
    run(tmp_path, "git", *GIT_USER, "commit", "-q", "-m", "square")
    run(tmp_path, dvc, "exp", "run", "--queue", "-n", "two", "-S", "x=2")
    run(tmp_path, dvc, "exp", "run", "--queue", "-n", "three", "-S", "x=3")
    try:
        run(tmp_path, dvc, "queue", "start", "-j", "1")
        deadline = time.monotonic() + 240
        while any(word in run(tmp_path, dvc, "queue", "status") for word in ("Queued", "Running")):
            assert time.monotonic() < deadline, run(tmp_path, dvc, "queue", "status")
            time.sleep(1)
    finally:
        subprocess.run([dvc, "queue", "stop"], cwd=tmp_path, capture_output=True, timeout=60)
    rows = list(csv.DictReader(io.StringIO(run(tmp_path, dvc, "exp", "show", "--csv"))))
    done = {r["Experiment"]: (r["x"], r["square"], r["State"]) for r in rows if r["Experiment"]}
    assert done == {"two": ("2", "4", "Success"), "three": ("3", "9", "Success")}, rows
