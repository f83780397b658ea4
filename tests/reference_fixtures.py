"""The reference implementation's fixtures (tests/fixtures/reference, copied from the shared
reference folder) and the deterministic weight rule they were computed with."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
LAYOUT_FILE = {"bfvr": "layout-bfvr.json", "deflicker": "layout-deflicker.json",
               "deflicker-pixel": "layout-deflicker.json"}
FIXTURE_CONFIG = {"bfvr": "bfvr", "deflicker": "deflicker", "deflicker-pixel": "deflicker"}


def layout(task: str) -> dict[str, tuple[int, ...]]:
    """Reference key -> shape, in the reference state dict's order."""
    entries = json.loads((FIXTURES / LAYOUT_FILE[task]).read_text())["entries"]
    return {e["key"]: tuple(e["shape"]) for e in entries}


def rule_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The weight rule: standard normals seeded by the key's CRC-32, scaled by fan-in for
    matrices, 1 + 0.1 n for norm scales, 0.1 n for biases."""
    n = np.random.default_rng(zlib.crc32(key.encode("utf-8"))).standard_normal(size=shape, dtype=np.float32)
    if len(shape) >= 2:
        value = n / np.float32(math.sqrt(math.prod(shape[1:])))
    elif key.endswith("weight"):
        value = 1 + np.float32(0.1) * n
    else:
        value = np.float32(0.1) * n
    return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


def rule_state_dict(task: str, keep=lambda key: True) -> dict[str, torch.Tensor]:
    return {k: rule_tensor(k, s) for k, s in layout(task).items() if keep(k)}


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"fixture-{name}.npz") as z:
        return {k: z[k] for k in z.files}


def probes(name: str) -> dict[str, list[float]]:
    return json.loads((FIXTURES / f"fixture-{name}.json").read_text())["probes_first8"]
