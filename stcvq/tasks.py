"""The restoration tasks stcvq trains one Stage II model for, each with its own degraded data."""

from __future__ import annotations

from typing import Literal, get_args

from stcvq.config import check

# bfvr: blind face video restoration (blur, low resolution, noise, compression);
# deflicker: brightness flicker; deflicker-pixel: AI-render pixel flicker.
Task = Literal["bfvr", "deflicker", "deflicker-pixel"]
TASKS: tuple[str, ...] = get_args(Task)


def check_task(task: str, where: str = "task") -> str:
    """``task`` when it is one of TASKS, else a ConfigError naming ``where``."""
    check(task in TASKS, f"{where} must be one of {list(TASKS)}, got {task!r}")
    return task
