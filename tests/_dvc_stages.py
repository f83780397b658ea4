"""dvc.yaml's stages as the tests see them: each stage's command line, with ``${item}`` /
``${key}`` filled in for one entry of a ``foreach`` stage, ``${item.<axis>}`` for one entry of a
``matrix`` stage, and ``${section.key}`` from params.yaml."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIRS = ("data/", "metrics/", "models/", "dvclive/")  # DVC outputs: never copied


def working_tree_files() -> list[str]:
    """Tracked files plus untracked, non-ignored ones (work not yet committed), minus outputs."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()
    files = sorted({f for f in out.split("\0") if f})
    return [f for f in files if not f.startswith(OUTPUT_DIRS) and f != "dvc.lock" and (ROOT / f).is_file()]


def copy_working_tree(dest: Path) -> Path:
    """The working tree's files (:func:`working_tree_files`) copied to ``dest``."""
    for name in working_tree_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


def stages(root: Path = ROOT) -> dict[str, Any]:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def stage_template(name: str, root: Path = ROOT) -> dict[str, Any]:
    """The part of a stage that holds ``cmd``, ``deps``, ``params`` and the outputs: ``do`` of a
    ``foreach`` stage, the stage itself otherwise (a ``matrix`` stage keeps them beside ``matrix``)."""
    stage = stages(root)[name]
    return stage["do"] if "foreach" in stage else stage


def _fill_params(cmd: str, root: Path) -> str:
    params = yaml.safe_load((root / "params.yaml").read_text())

    def value(match: re.Match) -> str:
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([\w-]+(?:\.[\w-]+)+)\}", value, cmd)


def _fill_item(cmd: str, item: str | Mapping[str, str]) -> str:
    """``${item}``, ``${key}`` and ``${item.<axis>}`` filled in: from the mapping (a matrix entry,
    one value per axis), or all with the one string (a foreach entry)."""

    def value(match: re.Match) -> str:
        axis = match.group(2)
        if isinstance(item, Mapping):
            if axis is None:
                raise ValueError(f"{match.group(0)} of a matrix stage: name an axis, as ${{item.<axis>}}")
            return str(item[axis])
        return item

    return re.sub(r"\$\{(item|key)(?:\.([\w-]+))?\}", value, cmd)


def stage_command(name: str, item: str | Mapping[str, str] | None = None, root: Path = ROOT) -> list[str]:
    """The stage's ``cmd`` split into words, e.g. ["python", "-m", "pipeline.crop", "--out", ...]."""
    cmd = stage_template(name, root)["cmd"]
    if item is not None:
        cmd = _fill_item(cmd, item)
    return shlex.split(_fill_params(cmd, root))


def stage_argv(name: str, item: str | Mapping[str, str] | None = None, root: Path = ROOT) -> list[str]:
    """The arguments dvc.yaml passes to the stage's ``python -m pipeline.<stage>``."""
    words = stage_command(name, item, root)
    if words[:2] != ["python", "-m"]:
        raise ValueError(f"dvc.yaml stage {name}: cmd does not start with `python -m`: {words}")
    return words[3:]


def stage_args(name: str, root: Path = ROOT, item: str | Mapping[str, str] | None = None) -> list[str]:
    """The arguments after ``python`` of the stage's cmd, e.g. ``["-m", "pipeline.stage1", "--train", ...]``."""
    return stage_command(name, item, root)[1:]
