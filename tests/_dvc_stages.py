"""dvc.yaml's stages as the tests see them: each stage's command line, with ``${item}`` /
``${key}`` filled in for one entry of a ``foreach`` stage and ``${section.key}`` from params.yaml."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

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
