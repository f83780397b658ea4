"""End to end: `dvc repro motion` (the last curation stage) in a temporary copy of the working
tree, then a second `dvc repro` that must run nothing. Runs the real stage scripts on the
embedded default with the committed params.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _dvc_stages import copy_working_tree

VENV_BIN = Path(sys.executable).parent  # the interpreter running the tests has dvc beside it


def dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # stage commands call `python`: it must be this environment's interpreter
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_dvc_repro_curation_in_a_fresh_copy(tmp_path):
    if not (VENV_BIN / "dvc").exists():
        pytest.skip(f"dvc is not installed beside {sys.executable}")
    clone = copy_working_tree(tmp_path / "clone")
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)

    first = dvc(["repro", "motion"], clone)
    for stage in ("ingest", "crop", "orientation", "text", "motion"):
        assert f"Running stage '{stage}'" in first.stdout

    stats = json.loads((clone / "metrics/curation.json").read_text())
    assert stats["kept"] == 3 and stats["dropped"] == 3
    assert stats["reasons"] == {"no_face": 2, "text": 1}
    table = pq.read_table(clone / "data/manifest.parquet").to_pylist()
    kept = sorted(r["video_id"] for r in table if r["keep"])
    assert kept == ["carphone_halffps-s0-t0", "carphone_pristine-s0-t0", "carphone_x4-s0-t0"]  # one track each
    for r in table:
        if r["keep"]:
            assert (clone / r["cropped_path"]).stat().st_size > 0
    for stage in ("ingest", "crop", "orientation", "text"):
        assert (clone / f"data/manifests/{stage}.parquet").exists()
    assert (clone / "dvc.lock").exists()

    metrics = dvc(["metrics", "show", "--json"], clone)
    assert "curation.json" in metrics.stdout

    second = dvc(["repro", "motion"], clone)
    assert "Running stage" not in second.stdout
    assert "didn't change" in second.stdout or "up to date" in second.stdout
