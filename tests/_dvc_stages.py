"""dvc.yaml's stages as the tests see them: each stage's command line, with ``${item}`` /
``${key}`` filled in for one entry of a ``foreach`` stage."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def stages(root: Path = ROOT) -> dict[str, Any]:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def stage_command(name: str, item: str | None = None, root: Path = ROOT) -> list[str]:
    """The stage's ``cmd`` split into words, e.g. ["python", "-m", "pipeline.crop", "--out", ...]."""
    stage = stages(root)[name]
    cmd = stage["do"]["cmd"] if "foreach" in stage else stage["cmd"]
    if item is not None:
        cmd = cmd.replace("${item}", item).replace("${key}", item)
    return shlex.split(cmd)


def stage_argv(name: str, item: str | None = None, root: Path = ROOT) -> list[str]:
    """The arguments dvc.yaml passes to the stage's ``python -m pipeline.<stage>``."""
    words = stage_command(name, item, root)
    if words[:2] != ["python", "-m"]:
        raise ValueError(f"dvc.yaml stage {name}: cmd does not start with `python -m`: {words}")
    return words[3:]
