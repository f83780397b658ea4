"""A dvc.yaml stage's command as the tests run it: DVC's ``${section.key}`` filled in from params.yaml."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def stage_args(stage: str, root: Path = ROOT) -> list[str]:
    """The arguments after ``python`` of ``stage``'s cmd, e.g. ``["-m", "pipeline.stage1", "--train", ...]``."""
    cmd = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    params = yaml.safe_load((root / "params.yaml").read_text())

    def value(match: re.Match) -> str:
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    argv = shlex.split(re.sub(r"\$\{([\w.-]+)\}", value, cmd))
    assert argv[0] == "python", cmd
    return argv[1:]
