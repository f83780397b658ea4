"""The shard ClipSource adapter the Stage II (and Stage I) loops read: determinism, ranks, LQ member."""

from __future__ import annotations

import json

import numpy as np
import torch

from stcvq.data.shards import ShardConfig, ShardWriter, encode_frames
from stcvq.training.batches import ShardClips, has_member, shard_batches


def write_samples(folder, count: int) -> None:
    """``count`` random samples in train-test-*.tar; lq_noisefree = 255 - lq."""
    with ShardWriter(folder, "train", "test", ShardConfig(frame_codec="npy", max_samples=3)) as writer:
        for i in range(count):
            rng = np.random.default_rng(i)
            hq, lq = (rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8) for _ in range(2))
            writer.write(f"clip-{i:04d}", {"hq.npy": encode_frames(hq, "npy"), "lq.npy": encode_frames(lq, "npy"),
                                           "lq_noisefree.npy": encode_frames(255 - lq, "npy"),
                                           "json": json.dumps({"i": i}).encode()})


def _keys(batches) -> list[str]:
    return [m["key"] for b in batches for m in b["meta"]]


def test_shard_clips_is_deterministic_disjoint_and_picks_the_lq_member(tmp_path):
    write_samples(tmp_path, 7)
    index = tmp_path / "train-test.json"
    source = ShardClips(index, seed=3)
    assert len(source) == 7
    one = list(source.batches(epoch=0, rank=0, world_size=1, batch_size=2))
    assert [b["hq"].shape[0] for b in one] == [2, 2, 2]  # the partial batch is dropped
    assert _keys(one) == _keys(source.batches(0, 0, 1, 2))  # same epoch, same order
    assert _keys(one) != _keys(source.batches(1, 0, 1, 2))  # another epoch, another order
    r0, r1 = _keys(source.batches(0, 0, 2, 1)), _keys(source.batches(0, 1, 2, 1))
    assert len(r0) == len(r1) == 3 and not set(r0) & set(r1)
    full = next(iter(ShardClips(index, lq="lq").batches(0, 0, 1, 1)))
    noisefree = next(iter(ShardClips(index, lq="lq_noisefree").batches(0, 0, 1, 1)))
    assert full["meta"][0]["key"] == noisefree["meta"][0]["key"]
    torch.testing.assert_close(noisefree["lq"], 1 - full["lq"])  # the fixture writes 255 - lq
    assert has_member(index, "lq_noisefree") and not has_member(index, "lq_other")


def test_shard_batches_give_every_clip_once_in_order(tmp_path):
    write_samples(tmp_path, 5)
    batches = shard_batches(tmp_path / "train-test.json", batch_size=2)
    first, second = _keys(batches()), _keys(batches())
    assert first == second and sorted(first) == first and len(first) == 5
