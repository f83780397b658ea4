"""Switch the pipeline to another profile: print the `dvc exp run -S` overrides it needs.

    dvc exp run -n paper $(python -m tools.profile paper)

A profile (profiles/NAME.yaml) holds only the values that differ from params.yaml, nested
like params.yaml. Running it as a DVC experiment keeps the committed embedded default intact
and records the paper-profile run beside it (`dvc exp show`). `--check` only validates that
every key exists in params.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline.common import PARAMS_FILE, ROOT

PROFILES = ROOT / "profiles"


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys of the leaves; lists and non-dict values are leaves."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{dotted}.")
        else:
            yield dotted, value


def lookup(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def overrides(name: str, params_file: Path = PARAMS_FILE) -> list[str]:
    """`-S key=value` arguments for profile ``name``; unknown keys are an error."""
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise SystemExit(f"{path}: no such profile (known: {known})")
    profile = yaml.safe_load(path.read_text()) or {}
    params = yaml.safe_load(params_file.read_text()) or {}
    args = []
    for key, value in flatten(profile):
        if not lookup(params, key):
            raise SystemExit(f"{path}: '{key}' is not a key of {params_file.name}")
        # JSON is valid YAML flow syntax, which is what DVC's -S parser reads.
        text = json.dumps(value, separators=(",", ":"))
        if isinstance(value, str) and " " not in value:
            text = value
        if " " in text:
            raise SystemExit(f"{path}: value of '{key}' contains a space; -S arguments cannot carry it")
        args += ["-S", f"{key}={text}"]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="profile name: profiles/NAME.yaml")
    parser.add_argument("--check", action="store_true", help="validate only")
    args = parser.parse_args(argv)
    result = overrides(args.name)
    if not args.check:
        print(" ".join(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
