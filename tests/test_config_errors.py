"""A bad params.yaml value stops a stage before any work, as one line naming the parameter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _dvc_stages import stage_args

from stcvq.config import ConfigError, from_dict
from stcvq.training.stage1 import Stage1LossConfig, Stage1TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("line, bad, named", [
    ("    regularizer: mpr", "    regularizer: bogus",
     "error: params.yaml:stage1.model.regularizer: 'bogus' is not one of ['none', 'pdr', 'mpr']"),
    ("    discriminator: dinov2-small", "    discriminator: bogus",
     "error: params.yaml:stage1.loss: discriminator: 'bogus' is not one of"),
])
def test_a_bad_stage1_param_is_one_line_and_exit_status_2(tmp_path, line, bad, named):
    """The real stage script on a copy of the checkout's pipeline/ and params.yaml with one
    value changed (stage scripts read the params.yaml beside their package)."""
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline")
    params = (ROOT / "params.yaml").read_text()
    assert sum(1 for row in params.splitlines() if row.split("#")[0].rstrip() == line) == 1
    (tmp_path / "params.yaml").write_text(params.replace(line + " ", bad + " ", 1))
    proc = subprocess.run(
        [sys.executable, *stage_args("stage1")], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(named), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "pipeline"]  # nothing written


@pytest.mark.parametrize("name", ["dinov2-small", "clip-b16", "facebook/dinov2-base", None, ""])
def test_discriminator_accepts_known_names_hub_ids_and_off(name):
    assert Stage1LossConfig(discriminator=name).discriminator == name


def test_discriminator_accepts_a_local_folder(tmp_path):
    assert Stage1LossConfig(discriminator=str(tmp_path)).discriminator == str(tmp_path)


def test_an_unknown_discriminator_names_the_parameter():
    with pytest.raises(ConfigError, match=r"^cfg\.loss: discriminator: 'dinov2-smal' is not one of"):
        from_dict(Stage1TrainConfig, {"loss": {"discriminator": "dinov2-smal"}}, where="cfg")
