"""What every stage script shares: reading params.yaml and setting up logging.

Stage scripts stay thin: take the paths they read and write as options (dvc.yaml's ``cmd``
passes them, so each path is written once), read their params section, build the typed config
from stcvq, call one library function, write their outputs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from stcvq.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = ROOT / "params.yaml"


def load_params(*sections: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The named top-level sections of params.yaml (all of it when none are named)."""
    with open(path) as fh:
        params = yaml.safe_load(fh) or {}
    if not sections:
        return params
    missing = [s for s in sections if s not in params]
    if missing:
        raise SystemExit(f"{path}: missing section(s) {missing}")
    return {s: params[s] for s in sections}


def setup_logging(stage: str) -> logging.Logger:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {stage} %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    return logging.getLogger(f"pipeline.{stage}")


def run_stage(main: Callable[..., Any], *args: Any) -> None:
    """Run a stage's ``main``. A bad params.yaml value (ConfigError, raised before any work)
    is one line on stderr naming the parameter, and exit status 2, not a traceback."""
    try:
        main(*args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
