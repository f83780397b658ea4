"""A run folder is resumed only under the fingerprint it was trained with: config, data, code
and upstream model (stcvq.training.provenance), without training anything."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import torch

from stcvq.data.shards import ShardConfig, ShardWriter, encode_frames
from stcvq.training.batches import ShardClips, TensorClips
from stcvq.training.provenance import rank, reset_stale_run, run_fingerprint

CODE = ("stcvq.training.stage2", "stcvq.training.batches")


def _write_shards(folder, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, "train", "bfvr", ShardConfig(frame_codec="npy")) as writer:
        for i in range(3):
            hq = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
            writer.write(f"clip-{i}", {"hq.npy": encode_frames(hq, "npy"), "lq.npy": encode_frames(255 - hq, "npy")})


def test_each_input_of_a_run_changes_its_own_entry_of_the_fingerprint():
    clips = torch.rand(4, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    upstream = torch.nn.Linear(2, 2)
    base = run_fingerprint({"lr": 1e-3}, [TensorClips(clips)], CODE, upstream=upstream)
    assert base == run_fingerprint({"lr": 1e-3}, [TensorClips(clips.clone())], CODE, upstream=upstream)
    other_weights = torch.nn.Linear(2, 2)  # another draw of the initialisation
    variants = {
        "config": run_fingerprint({"lr": 2e-3}, [TensorClips(clips)], CODE, upstream=upstream),
        "data": run_fingerprint({"lr": 1e-3}, [TensorClips(clips.flip(0))], CODE, upstream=upstream),
        "code": run_fingerprint({"lr": 1e-3}, [TensorClips(clips)], CODE[:1], upstream=upstream),
        "upstream": run_fingerprint({"lr": 1e-3}, [TensorClips(clips)], CODE, upstream=other_weights),
    }
    for key, fingerprint in variants.items():
        assert [k for k in base if base[k] != fingerprint[k]] == [key]
    assert "stcvq.training.provenance" in base["code"]["modules"]  # what the stage imports, transitively


def test_shard_fingerprint_follows_the_clips_not_the_folder(tmp_path):
    _write_shards(tmp_path / "a", seed=0)
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    _write_shards(tmp_path / "b", seed=1)
    first = ShardClips(tmp_path / "a" / "train-bfvr.json").fingerprint()
    assert ShardClips(tmp_path / "moved" / "train-bfvr.json").fingerprint() == first
    assert ShardClips(tmp_path / "b" / "train-bfvr.json").fingerprint() != first


def test_a_run_folder_of_another_fingerprint_is_wiped(tmp_path, caplog):
    run = tmp_path / "run"
    old = {"config": {"lr": 1e-3}, "data": ["a"], "code": {"sha256": "0"}, "upstream": None}
    reset_stale_run(run, old)
    (run / "checkpoints").mkdir()
    reset_stale_run(run, old)  # the same inputs: the checkpoints stay to be resumed
    assert (run / "checkpoints").is_dir()
    with caplog.at_level(logging.INFO):
        reset_stale_run(run, {**old, "data": ["b"]})
    assert "data changed since the last run, starting over" in caplog.text
    assert not (run / "checkpoints").exists()
    assert json.loads((run / "run.json").read_text())["data"] == ["b"]


def test_only_rank_zero_owns_the_run_folder(tmp_path, monkeypatch):
    assert rank() == 0
    monkeypatch.setenv("RANK", "1")
    assert rank() == 1
    reset_stale_run(tmp_path / "run", {"config": {}})
    assert not (tmp_path / "run").exists()
