"""Model folders: ``model.safetensors`` (every weight) + ``config.json``, written atomically.

Shared by the Stage I and Stage II models' ``save_pretrained`` / ``from_pretrained``. Loading
never unpickles anything: weights are safetensors, the config is JSON checked by the caller's
typed dataclass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stcvq.io import atomic_path, write_json


def save_model_folder(directory: str | Path, model: nn.Module, model_type: str, config: dict[str, Any],
                      provenance: dict[str, Any] | None = None) -> None:
    """``provenance``: where imported weights came from (stored in config.json beside the
    config; see :func:`read_provenance`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"model_type": model_type})
    extra = {"provenance": provenance} if provenance is not None else {}
    write_json(directory / "config.json", {"model_type": model_type, **config, **extra})


def read_provenance(directory: str | Path) -> dict[str, Any] | None:
    """The provenance an imported model folder records, or None for a model stcvq trained."""
    path = Path(directory) / "config.json"
    return json.loads(path.read_text()).get("provenance") if path.is_file() else None


def read_model_config(directory: str | Path, model_type: str) -> tuple[dict[str, Any], Path]:
    """The folder's config (without ``model_type`` and ``provenance``) and the path of its config.json."""
    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing (a {model_type} model folder holds config.json and model.safetensors)"
            )
    raw = json.loads(config_path.read_text())
    if raw.pop("model_type", None) != model_type:
        raise ValueError(f"{config_path}: not a {model_type} config")
    raw.pop("provenance", None)
    return raw, config_path


def load_model_weights(directory: str | Path, model: nn.Module, map_location: str | torch.device = "cpu") -> None:
    """Load the folder's safetensors into ``model``; a mismatch names the folder's files."""
    weights_path = Path(directory) / "model.safetensors"
    try:
        model.load_state_dict(load_file(str(weights_path), device=str(map_location)))
    except RuntimeError as err:
        raise ValueError(f"{weights_path}: weights do not match {Path(directory) / 'config.json'}: {err}") from None
