"""dvc.yaml's stages as the tests see them: each stage's command line, with ``${item}`` /
``${key}`` filled in for one entry of a ``foreach`` stage and ``${section.key}`` from params.yaml."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def stages(root: Path = ROOT) -> dict[str, Any]:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def _fill_params(cmd: str, root: Path) -> str:
    params = yaml.safe_load((root / "params.yaml").read_text())

    def value(match: re.Match) -> str:
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([\w-]+(?:\.[\w-]+)+)\}", value, cmd)


def stage_command(name: str, item: str | None = None, root: Path = ROOT) -> list[str]:
    """The stage's ``cmd`` split into words, e.g. ["python", "-m", "pipeline.crop", "--out", ...]."""
    stage = stages(root)[name]
    cmd = stage["do"]["cmd"] if "foreach" in stage else stage["cmd"]
    if item is not None:
        cmd = cmd.replace("${item}", item).replace("${key}", item)
    return shlex.split(_fill_params(cmd, root))


def stage_argv(name: str, item: str | None = None, root: Path = ROOT) -> list[str]:
    """The arguments dvc.yaml passes to the stage's ``python -m pipeline.<stage>``."""
    words = stage_command(name, item, root)
    if words[:2] != ["python", "-m"]:
        raise ValueError(f"dvc.yaml stage {name}: cmd does not start with `python -m`: {words}")
    return words[3:]


def stage_args(name: str, root: Path = ROOT, item: str | None = None) -> list[str]:
    """The arguments after ``python`` of the stage's cmd, e.g. ``["-m", "pipeline.stage1", "--train", ...]``."""
    return stage_command(name, item, root)[1:]
