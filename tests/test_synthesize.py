"""Synthesis: every clip of a clip table degraded for one task and written as shards, with the
same bytes for the same seed whatever the number of workers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _synthesis_data import carphone_crop, manifest_for

from stcvq.data.clips import ClipConfig, plan_clips
from stcvq.data.degrade import PixelFlickerConfig, SynthesisConfig
from stcvq.data.shards import ClipDataset, ShardConfig, ShardError, make_loader
from stcvq.data.synthesize import write_task_shards


@pytest.fixture(scope="module")
def clip_table(carphone_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("crop")
    crop = carphone_crop(carphone_path, folder / "carphone.mkv", num_frames=48)
    manifest = manifest_for([{"video_id": "carphone", "source_group": "carphone", "cropped_path": str(crop),
                              "num_frames": 48}])
    clips, _, _ = plan_clips(manifest, ClipConfig(length=8, splits={"train": 0.5, "val": 0.25, "test": 0.25}))
    return clips


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("task", ["bfvr", "deflicker", "deflicker-pixel"])
def test_same_seed_same_bytes(clip_table, tmp_path, task):
    cfg = SynthesisConfig(deflicker_pixel=PixelFlickerConfig(backend="synthetic"))
    first = write_task_shards(clip_table, task, cfg, ShardConfig(), tmp_path / "a", seed=0, workers=1)
    write_task_shards(clip_table, task, cfg, ShardConfig(), tmp_path / "b", seed=0, workers=2 if task == "bfvr" else 1)
    write_task_shards(clip_table, task, cfg, ShardConfig(), tmp_path / "c", seed=1, workers=1)
    assert first["clips"] == {"train": 3, "val": 1, "test": 1} and not first["skipped"]
    assert digest(tmp_path / "a") == digest(tmp_path / "b")  # also independent of the worker count
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    batch = next(iter(make_loader(tmp_path / "a" / f"train-{task}.json", batch_size=2)))
    meta = batch["meta"][0]
    assert batch["hq"].shape == batch["lq"].shape == (2, 3, 8, 64, 64)
    assert meta["task"] == task and meta["seed"] and meta["source_group"] == "carphone" and meta["split_mode"] == "time"
    assert meta["frame_stop"] - meta["frame_start"] == 8 and meta["backend"]
    if task == "deflicker-pixel":
        assert "NOT Stable Diffusion" in meta["degradation"]["backend_label"]


def test_empty_split_gets_an_empty_index(clip_table, tmp_path):
    cfg = SynthesisConfig()
    only_train = clip_table[clip_table["split"] == "train"].head(1)
    summary = write_task_shards(only_train, "deflicker", cfg, ShardConfig(), tmp_path, splits=["train", "val", "test"])
    assert summary["clips"] == {"train": 1, "val": 0, "test": 0}
    assert json.loads((tmp_path / "val-deflicker.json").read_text())["num_samples"] == 0
    with pytest.raises(ShardError, match="no samples"):
        ClipDataset(tmp_path / "val-deflicker.json")
