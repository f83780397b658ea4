"""Shards: lossless round trip, byte-identical rewrites, and a loader that shards, shuffles and resumes."""

from __future__ import annotations

import functools
import http.server
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from stcvq.data.shards import (
    ClipDataset,
    ShardConfig,
    ShardError,
    ShardWriter,
    decode_frames,
    encode_frames,
    load_index,
    make_loader,
)


def random_clip(seed: int, t: int = 4, h: int = 16, w: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def write_samples(folder: Path, count: int, *, codec: str = "ffv1", max_samples: int = 5) -> dict[str, np.ndarray]:
    """``count`` samples of random frames in train-test-*.tar; returns key -> hq frames."""
    ext = {"ffv1": "mkv", "npy": "npy"}[codec]
    written = {}
    with ShardWriter(folder, "train", "test", ShardConfig(frame_codec=codec, max_samples=max_samples)) as writer:
        for i in range(count):
            key = f"clip-{i:04d}"
            hq, lq = random_clip(i), random_clip(1000 + i)
            writer.write(key, {
                f"hq.{ext}": encode_frames(hq, codec), f"lq.{ext}": encode_frames(lq, codec),
                f"lq_noisefree.{ext}": encode_frames(255 - lq, codec), "json": json.dumps({"i": i}).encode(),
            })
            written[key] = hq
    return written


def keys_of(loader) -> list[str]:
    return [m["key"] for batch in loader for m in batch["meta"]]


@pytest.mark.parametrize("codec", ["ffv1", "npy"])
def test_read_back_is_lossless(tmp_path, codec):
    written = write_samples(tmp_path, 7, codec=codec)
    dataset = ClipDataset(tmp_path / "train-test.json", batch_size=None, shuffle=False)
    seen = 0
    for sample in dataset:
        hq = sample["hq"]
        assert hq.dtype == torch.float32 and hq.shape == (3, 4, 16, 24) and 0 <= hq.min() and hq.max() <= 1
        back = (hq * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
        assert np.array_equal(back, written[sample["meta"]["key"]])
        assert sample["meta"]["i"] == int(sample["meta"]["key"][-4:])
        seen += 1
    assert seen == 7
    assert len(list(tmp_path.glob("train-test-*.tar"))) == 2  # 5 per shard


def test_lq_variant_selection(tmp_path):
    write_samples(tmp_path, 2)
    plain = next(iter(ClipDataset(tmp_path / "train-test.json", batch_size=None, shuffle=False)))
    clean = next(iter(ClipDataset(tmp_path / "train-test.json", batch_size=None, shuffle=False, lq="lq_noisefree")))
    assert torch.allclose(clean["lq"], 1 - plain["lq"])
    with pytest.raises(ShardError, match="without hq/lq_x"):
        ClipDataset(tmp_path / "train-test.json", lq="lq_x")


def test_shards_are_plain_webdataset_tars(tmp_path):
    write_samples(tmp_path, 3)
    with tarfile.open(tmp_path / "train-test-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:4]] == ["clip-0000.hq.mkv", "clip-0000.json", "clip-0000.lq.mkv",
                                             "clip-0000.lq_noisefree.mkv"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    import webdataset as wds

    samples = list(wds.WebDataset(str(tmp_path / "train-test-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["clip-0000", "clip-0001", "clip-0002"]
    assert np.array_equal(decode_frames(samples[1]["hq.mkv"], "mkv"), random_clip(1))
    # scanning a plain tar (no index) finds the same samples
    keys = [r.key for r in load_index([str(tmp_path / "train-test-000000.tar")])]
    assert keys == ["clip-0000", "clip-0001", "clip-0002"]


def test_keys_with_dots_rejected(tmp_path):
    with ShardWriter(tmp_path, "train", "x") as writer, pytest.raises(ValueError, match="without dots"):
        writer.write("a.b", {"json": b"{}"})


def test_no_duplicates_across_workers_and_ranks(tmp_path):
    write_samples(tmp_path, 22)
    per_rank = []
    for rank in range(2):
        loader = make_loader(tmp_path / "train-test.json", batch_size=3, num_workers=2, rank=rank, world_size=2, seed=5)
        keys = keys_of(loader)
        assert len(keys) == len(loader.dataset.rank_order()) == 11
        per_rank.append(keys)
    union = per_rank[0] + per_rank[1]
    assert len(union) == len(set(union)) == 22
    # shuffled, and a new epoch brings a new order
    assert per_rank[0] != sorted(per_rank[0])
    loader = make_loader(tmp_path / "train-test.json", batch_size=3, num_workers=2, rank=0, world_size=2, seed=5)
    loader.dataset.set_epoch(1)
    assert keys_of(loader) != per_rank[0]


def test_uneven_count_keeps_ranks_in_lockstep(tmp_path):
    write_samples(tmp_path, 7)
    sizes = [len(ClipDataset(tmp_path / "train-test.json", batch_size=2, rank=r, world_size=2).rank_order())
             for r in range(2)]
    assert sizes == [3, 3]


def test_resume_mid_epoch(tmp_path):
    write_samples(tmp_path, 17)
    source = tmp_path / "train-test.json"
    full = keys_of(make_loader(source, batch_size=2, num_workers=2, seed=3, epoch=4))
    assert len(full) == 17
    consumed = []
    loader = make_loader(source, batch_size=2, num_workers=2, seed=3, epoch=4)
    for step, batch in enumerate(loader):
        consumed += [m["key"] for m in batch["meta"]]
        if step == 2:
            state = loader.dataset.state_dict(samples_consumed=len(consumed))
            break
    assert consumed == full[:6]
    resumed = make_loader(source, batch_size=2, num_workers=2)
    resumed.dataset.load_state_dict(state)
    assert keys_of(resumed) == full[6:]


def test_corrupt_shard_raises_or_skips(tmp_path):
    write_samples(tmp_path, 6)
    index = json.loads((tmp_path / "train-test.json").read_text())
    offset, size, _ = index["shards"][0]["samples"][2]["members"]["hq.mkv"]
    shard = tmp_path / "train-test-000000.tar"
    data = bytearray(shard.read_bytes())
    data[offset + size // 2: offset + size // 2 + 16] = b"\xff" * 16
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train-test-000000\.tar: sample clip-0002: member hq\.mkv is corrupt"):
        list(ClipDataset(tmp_path / "train-test.json", batch_size=None, shuffle=False))
    dataset = ClipDataset(tmp_path / "train-test.json", batch_size=None, shuffle=False, on_error="skip")
    keys = [s["meta"]["key"] for s in dataset]
    assert keys == ["clip-0000", "clip-0001", "clip-0003", "clip-0004", "clip-0005"]
    assert len(dataset.skipped) == 1 and "clip-0002" in dataset.skipped[0]


def test_truncated_and_garbage_tars_give_clear_errors(tmp_path):
    write_samples(tmp_path, 3)
    shard = tmp_path / "train-test-000000.tar"
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(ShardError, match="cut.tar"):
        load_index([str(truncated)])
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(ShardError, match="garbage.tar"):
        load_index([str(garbage)])
    # an index whose shard is truncated: the loader names the sample it cannot read
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(ShardError, match="train-test-000000.tar: sample clip-000"):
        list(ClipDataset(tmp_path / "train-test.json", batch_size=None, shuffle=False))


def test_reads_over_http(tmp_path):
    written = write_samples(tmp_path, 4)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/train-test.json"
        for sample in ClipDataset(url, batch_size=None, shuffle=False):
            back = (sample["hq"] * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
            assert np.array_equal(back, written[sample["meta"]["key"]])
        tar_url = url.replace(".json", "-000000.tar")
        assert len(ClipDataset([tar_url], batch_size=None)) == 4
    finally:
        server.shutdown()
        server.server_close()
