"""What a training run's weights depend on, and which process owns the run folder.

A run folder persists between `dvc repro` runs so that a killed run resumes. It must not resume
when anything that shapes its weights has changed: the config, the training data, the code, or
the model it starts from (Stage II's Stage I). :func:`run_fingerprint` records those four for
both stages; :func:`reset_stale_run` wipes a run folder whose recorded fingerprint differs.
:func:`code_fingerprint` hashes the source of the modules a run imports, found by
:func:`imported_files`, the import walker tests/test_dvc_deps.py checks dvc.yaml's deps with.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from stcvq.config import to_dict
from stcvq.io import write_text

if TYPE_CHECKING:
    from torch import nn

    from stcvq.training.loop import ClipSource

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the stcvq package


def rank() -> int:
    """This process's rank under torchrun (``RANK``; 0 without torchrun). Rank 0 owns the run
    folder and writes the exports; the others would race it deleting and rewriting them."""
    return int(os.environ.get("RANK", "0"))


# -- the import walker --------------------------------------------------------------------------
def module_file(name: str, root: Path) -> Path | None:
    """The file that defines module ``name`` under ``root``, or None (not a module there, or a
    name imported from a module rather than a module). A package folder wins over a same-named
    ``.py`` file, as in Python's own import."""
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _import_module_literal(node: ast.AST) -> str | None:
    """``x`` of a call ``importlib.import_module("x")`` or ``import_module("x")``, else None."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func, first = node.func, node.args[0]
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module"
             and isinstance(func.value, ast.Name) and func.value.id == "importlib")
    named = named or (isinstance(func, ast.Name) and func.id == "import_module")
    literal = isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith(".")
    return first.value if named and literal else None


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names a file imports anywhere in it (module level and inside functions), plus
    ``importlib.import_module("...")`` calls with a literal absolute name. ``from a import b``
    gives ``a`` and ``a.b`` (``b`` may be a submodule); relative imports are resolved against the
    file's package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # level 1 is this package, 2 its parent, ...
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (name := _import_module_literal(node)) is not None:
            names.add(name)
    return names


def imported_files(module: str, root: Path = PACKAGE_ROOT, packages: tuple[str, ...] = ("stcvq",)) -> dict[str, Path]:
    """Every module of ``packages`` under ``root`` that ``import module`` runs, transitively,
    with its file: the module, the ``__init__.py`` of each package above it, and what each of
    those imports. Read from the source, not from ``sys.modules``, so the answer does not depend
    on what else the process has imported."""
    files: dict[str, Path] = {}
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in packages:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b first
        path = module_file(name, root)
        if path is not None:
            files[name] = path
            todo += imported_names(path, name)
    return files


# -- fingerprints -------------------------------------------------------------------------------
def code_fingerprint(*roots: str) -> dict[str, Any]:
    """SHA-256 over the source of the ``stcvq`` modules that ``roots`` import, transitively
    (:func:`imported_files`), and their names. The digest runs over (module name, source bytes),
    sorted by module name. Not covered: code outside ``stcvq`` (the stage scripts under
    ``pipeline/``, torch and the other libraries)."""
    files = {name: path for root in roots for name, path in imported_files(root).items()}
    digest = hashlib.sha256()
    for name in sorted(files):
        source = files[name].read_bytes()
        digest.update(f"{name}\0{len(source)}\0".encode())  # unambiguous concatenation
        digest.update(source)
    return {"sha256": digest.hexdigest(), "modules": sorted(files)}


def tensors_fingerprint(tensors: Mapping[str, Any], header: str = "") -> str:
    """SHA-256 over ``header`` and each named tensor (name, dtype, shape, bytes), sorted by name."""
    digest = hashlib.sha256(f"{header}\0".encode())
    for name, tensor in sorted(tensors.items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over a model's config (when it has one) and every tensor of its state dict."""
    config = getattr(model, "config", None)
    header = json.dumps(to_dict(config), sort_keys=True) if dataclasses.is_dataclass(config) else ""
    return tensors_fingerprint(model.state_dict(), header)


def run_fingerprint(config: Any, data: Iterable[ClipSource], code: Iterable[str],
                    upstream: nn.Module | None = None) -> dict[str, Any]:
    """What a run's weights depend on: ``config`` (a config dataclass or a JSON-ready dict), the
    ``fingerprint()`` of each training data source, the code of the modules ``code`` names
    (:func:`code_fingerprint`) and the ``upstream`` model it starts from."""
    return {"config": to_dict(config) if dataclasses.is_dataclass(config) else config,
            "data": [source.fingerprint() for source in data],
            "code": code_fingerprint(*code),
            "upstream": None if upstream is None else model_fingerprint(upstream)}


def reset_stale_run(out_dir: str | Path, fingerprint: dict[str, Any]) -> None:
    """Wipe ``out_dir`` when it holds a run of another fingerprint, then record ``fingerprint``
    in ``out_dir/run.json``. Without this, a changed config (an ablation), new data or changed
    code would resume, or silently return, the old run's weights."""
    out_dir = Path(out_dir)
    run_file = out_dir / "run.json"
    if rank() != 0:
        return
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if changed:
            log.info("%s: %s changed since the last run, starting over", out_dir, ", ".join(changed))
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_file, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


__all__ = ["code_fingerprint", "imported_files", "imported_names", "model_fingerprint", "module_file", "rank",
           "reset_stale_run", "run_fingerprint", "tensors_fingerprint"]
