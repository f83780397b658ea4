"""dvc.yaml lists, for every stage, the code the stage runs.

A stage's code is the pipeline module its ``cmd`` runs plus every ``stcvq`` / ``pipeline`` file
that importing it executes, found by the import walker the run fingerprints use
(:func:`stcvq.training.provenance.imported_files`: the imports in the source, module level and
inside functions alike, relative ones too, literal ``importlib.import_module`` calls, and the
``__init__.py`` of every package on the way). A file
missing from the stage's deps would let ``dvc repro`` call results current after a change there;
a listed code file the stage never imports reruns the stage for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from _dvc_stages import ROOT, stage_command, stage_template, stages

from stcvq.training.provenance import imported_files, imported_names

PACKAGES = ("stcvq", "pipeline")


def executed_files(module: str, root: Path = ROOT) -> set[Path]:
    """Every stcvq / pipeline file that ``import module`` runs (the library's import walker)."""
    return set(imported_files(module, root, PACKAGES).values())


def runs_code(path: Path) -> bool:
    """False for a file with nothing but a docstring (an empty package marker): changing such a
    file cannot change a result, and once code lands in it, it counts."""
    body = ast.parse(path.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


def stage_code(name: str, root: Path = ROOT) -> set[str]:
    """The code files (relative paths) stage ``name`` of dvc.yaml runs."""
    words = stage_command(name, "x", root)
    module = words[words.index("-m") + 1]
    return {p.relative_to(root).as_posix() for p in executed_files(module, root) if runs_code(p)}


def listed_code(name: str) -> list[str]:
    deps = stage_template(name).get("deps", [])
    return [d for d in deps if "${" not in d and d.split("/")[0] in PACKAGES]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_dvc_yaml_lists_every_file_a_stage_runs(name):
    deps = listed_code(name)
    missing = sorted(f for f in stage_code(name) if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {name}: deps miss code the stage runs: {missing}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_dvc_yaml_lists_no_code_a_stage_does_not_run(name):
    code = stage_code(name)
    unused = [dep for dep in listed_code(name) if not any(covered(f, [dep]) for f in code)]
    assert not unused, f"dvc.yaml stage {name}: deps list code the stage never imports: {unused}"


def test_the_walker_follows_every_kind_of_import(tmp_path):
    files = {
        "pkg/__init__.py": '"""Only a docstring."""\n',
        "pkg/main.py": "import json\nfrom .helpers import thing\n\n\ndef later():\n    import pkg.sub.deep\n",
        "pkg/helpers.py": "import importlib\n\nthing = importlib.import_module('pkg.plugin')\n",
        "pkg/plugin.py": "from importlib import import_module\n\nimport_module('pkg.late')\n",
        "pkg/late.py": "VALUE = 3\n",
        "pkg/sub/__init__.py": "LEVEL = 1\n",
        "pkg/sub/deep.py": "from pkg import leaf\nfrom .. import other\n",
        "pkg/leaf.py": "VALUE = 2\n",
        "pkg/other.py": "from pkg.sub import LEVEL\n",
        "pkg/unused.py": "import pkg.main\n",
        "elsewhere/x.py": "X = 0\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = {p.relative_to(tmp_path).as_posix() for p in imported_files("pkg.main", tmp_path, ("pkg",)).values()}
    assert found == {"pkg/__init__.py", "pkg/main.py", "pkg/helpers.py", "pkg/plugin.py", "pkg/late.py",
                     "pkg/sub/__init__.py", "pkg/sub/deep.py", "pkg/leaf.py", "pkg/other.py"}
    assert not runs_code(tmp_path / "pkg/__init__.py") and runs_code(tmp_path / "pkg/sub/__init__.py")
    assert imported_names(tmp_path / "pkg/sub/deep.py", "pkg.sub.deep") == {"pkg", "pkg.leaf", "pkg.other"}
