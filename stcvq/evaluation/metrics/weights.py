"""Loading weight files without unpickling arbitrary objects.

``.safetensors`` through safetensors; ``.pt``/``.pth``/``.bin`` through
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """A weights file is missing or does not fit the model. The message names the file."""


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code in it, wrong format
        raise WeightsError(f"{path}: cannot load weights: {err}") from None
    # Some checkpoints nest the tensors: {"state_dict": {...}} or {"model": {...}}.
    for key in ("state_dict", "model", "params"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strict load; a missing or unexpected key is a WeightsError naming ``path``."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        raise WeightsError(f"{path}: weights do not fit {type(module).__name__}: {err}") from None
    # BatchNorm's step counter is unused in eval and absent from checkpoints saved by
    # torch < 0.4 (e.g. pytorch-i3d's converted DeepMind weights)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{path}: weights do not fit {type(module).__name__}: "
            f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    log.info("loaded %d tensors from %s into %s", len(state), path, type(module).__name__)


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """A TorchScript archive (``torch.jit.save``); its code runs in the TorchScript interpreter."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such TorchScript file")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as err:
        raise WeightsError(f"{path}: not a loadable TorchScript archive: {err}") from None
    module.eval()
    return module


def is_torchscript(path: str | Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder; torch.save files have none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
