"""WebDataset shards of (HQ, LQ) clips, their writer, and a loader for training.

Layout (one folder per task)::

    {split}-{task}-000000.tar    standard WebDataset tars; one sample per clip:
        {key}.hq.mkv             HQ frames, FFV1 (lossless) in Matroska  (or .npy, see below)
        {key}.lq.mkv             LQ frames
        {key}.lq_noisefree.mkv   bfvr only: the same draws without noise (incremental Stage II)
        {key}.json               metadata: source, frame range, split, seed, backend, every draw
    {split}-{task}.json          index: shards, and for each sample each member's byte offset,
                                 size and CRC32

Frame format: FFV1 is lossless and several times smaller than raw frames, but decoding it takes
CPU in every loader worker. ``npy`` (raw uint8 (T, H, W, 3)) decodes far faster at several times
the size: pick it with ``frame_codec: npy`` when disk is cheap and CPU is not. Both are exact;
benchmarks/bench_synthesis.py measures both.

Determinism: tars are written with fixed member metadata (mtime 0, uid/gid 0, no user names)
in clip order, FFV1 with bitexact flags and one thread: the same input gives the same bytes.

The loader uses the index for random access (a local seek, or an HTTP range request), so it can
shuffle all samples of an epoch exactly, give each (rank, worker) a disjoint share, verify each
member's CRC, and resume mid-epoch by skipping what this rank already consumed. Plain tars
without an index work too (scanned once).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tarfile
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from stcvq.config import check
from stcvq.io import atomic_path, write_json
from stcvq.media.frames import frames_to_tensor

log = logging.getLogger(__name__)

FRAME_EXTENSIONS = {"ffv1": "mkv", "npy": "npy"}


class ShardError(RuntimeError):
    """A shard or one of its samples cannot be read. The message names the shard and sample."""


@dataclasses.dataclass
class ShardConfig:
    frame_codec: Literal["ffv1", "npy"] = "ffv1"
    max_samples: int = 256  # samples per shard
    max_bytes: int = 1_000_000_000  # start a new shard past this size

    def __post_init__(self) -> None:
        check(self.max_samples >= 1, "shards.max_samples must be >= 1")
        check(self.max_bytes >= 1, "shards.max_bytes must be >= 1")


# --------------------------------------------------------------------------- frame codecs


def encode_frames(frames: np.ndarray, codec: str = "ffv1", fps: float = 25.0) -> bytes:
    """Lossless bytes of uint8 RGB frames (T, H, W, 3)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"encode_frames: expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if codec == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(frames), allow_pickle=False)
        return buf.getvalue()
    if codec != "ffv1":
        raise ValueError(f"unknown frame codec {codec!r}; known: {list(FRAME_EXTENSIONS)}")
    buf = io.BytesIO()
    # bitexact: no encoder version strings or random segment ids, so bytes repeat run to run
    with av.open(buf, "w", format="matroska", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("ffv1", rate=int(round(fps)) or 25, options={"level": "3", "slicecrc": "1"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        stream.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_frames(data: bytes, ext: str) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 from :func:`encode_frames` bytes; ``ext`` is "mkv" or "npy"."""
    if ext == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if ext == "mkv":
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            # one thread: parallelism comes from DataLoader workers; a thread pool per clip costs more
            stream.codec_context.thread_count = 1
            stream.thread_type = "NONE"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        if not frames:
            raise ValueError("no decodable frames")
        return np.stack(frames)
    raise ValueError(f"unknown frame extension {ext!r}")


# --------------------------------------------------------------------------- writing


def shard_pattern(split: str, task: str) -> str:
    return f"{split}-{task}-%06d.tar"


def index_name(split: str, task: str) -> str:
    return f"{split}-{task}.json"


class ShardWriter:
    """Deterministic WebDataset tars ``{split}-{task}-%06d.tar`` plus their byte-offset index.

    Each shard is written to a temporary file and renamed when complete; the index is written
    by :meth:`close`. Use as a context manager.
    """

    def __init__(self, out_dir: str | Path, split: str, task: str, cfg: ShardConfig | None = None):
        self.out_dir = Path(out_dir)
        self.split, self.task = split, task
        self.cfg = cfg or ShardConfig()
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp_ctx = None
        self._keys: set[str] = set()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open_shard(self) -> None:
        name = shard_pattern(self.split, self.task) % len(self.shards)
        self._tmp_ctx = atomic_path(self.out_dir / name)
        tmp = self._tmp_ctx.__enter__()
        self._tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
        self.shards.append({"name": name, "samples": []})

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tmp_ctx.__exit__(None, None, None)
            self._tar, self._tmp_ctx = None, None

    @property
    def num_samples(self) -> int:
        return sum(len(s["samples"]) for s in self.shards)

    def abort(self) -> None:
        """Drop the shard being written (its temporary file); finished shards stay."""
        if self._tar is not None:
            self._tar.close()
            try:
                self._tmp_ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass
            self._tar = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: ``members`` maps extension ("hq.mkv", "json", ...) to bytes."""
        if "." in key or "/" in key or not key:
            raise ValueError(f"sample key {key!r} must be non-empty without dots or slashes")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.split}-{self.task}")
        self._keys.add(key)
        size = sum(len(b) + 512 for b in members.values())
        current = self.shards[-1] if self.shards else None
        if (current is None or len(current["samples"]) >= self.cfg.max_samples
                or (current["samples"] and current["bytes"] + size > self.cfg.max_bytes)):
            self._close_shard()
            self._open_shard()
            current = self.shards[-1]
            current["bytes"] = 0
        entry = {"key": key, "members": {}}
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            # data starts right after this member's header (one 512-byte USTAR block)
            offset_data = self._tar.offset + len(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
            self._tar.addfile(info, io.BytesIO(data))
            entry["members"][ext] = [offset_data, len(data), zlib.crc32(data)]
        current["samples"].append(entry)
        current["bytes"] += size

    def close(self) -> Path:
        """Finish the last shard and write the index; returns the index path."""
        self._close_shard()
        index = {
            "format": "stcvq-shards/1",
            "split": self.split,
            "task": self.task,
            "num_samples": self.num_samples,
            "shards": [{"name": s["name"], "samples": s["samples"]} for s in self.shards],
        }
        path = self.out_dir / index_name(self.split, self.task)
        write_json(path, index)
        return path


# --------------------------------------------------------------------------- reading bytes


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(str(source)).scheme in ("http", "https", "file")


def _local_path(source: str) -> str:
    parsed = urllib.parse.urlparse(str(source))
    return urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else str(source)


def _read_all(source: str) -> bytes:
    if urllib.parse.urlparse(str(source)).scheme in ("http", "https"):
        with urllib.request.urlopen(source, timeout=60) as response:
            return response.read()
    with open(_local_path(source), "rb") as fh:
        return fh.read()


class _ByteReader:
    """Reads byte ranges of shards: local seek, HTTP range request, or whole-file fallback."""

    def __init__(self, max_open: int = 8):
        self.max_open = max_open
        self._files: dict[str, Any] = {}
        self._whole: dict[str, bytes] = {}

    def read(self, source: str, offset: int, size: int) -> bytes:
        if urllib.parse.urlparse(source).scheme in ("http", "https"):
            if source in self._whole:
                return self._whole[source][offset:offset + size]
            request = urllib.request.Request(source, headers={"Range": f"bytes={offset}-{offset + size - 1}"})
            with urllib.request.urlopen(request, timeout=60) as response:
                if response.status == 206:
                    return response.read()
                data = response.read()  # the server ignores ranges: keep the shard (one at a time)
            self._whole = {source: data}
            return data[offset:offset + size]
        path = _local_path(source)
        fh = self._files.get(path)
        if fh is None:
            if len(self._files) >= self.max_open:
                self._files.pop(next(iter(self._files))).close()
            fh = self._files[path] = open(path, "rb")
        fh.seek(offset)
        return fh.read(size)

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


@dataclasses.dataclass(frozen=True)
class SampleRef:
    shard: str  # path or URL of the tar
    key: str
    members: dict  # extension -> (offset, size, crc32 or None)


def _join(base: str, name: str) -> str:
    if _is_url(base):
        return urllib.parse.urljoin(base, name)
    return str(Path(base).parent / name)


def scan_tar(source: str) -> list[SampleRef]:
    """Sample references of a plain WebDataset tar (no index): one pass over its headers."""
    try:
        if _is_url(source) and not source.startswith("file:"):
            tar = tarfile.open(fileobj=io.BytesIO(_read_all(source)), mode="r:")
            total = None
        else:
            path = _local_path(source)
            total = os.path.getsize(path)
            tar = tarfile.open(path, mode="r:")
        with tar:
            groups: dict[str, dict] = {}
            for info in tar:
                if not info.isfile():
                    continue
                if total is not None and info.offset_data + info.size > total:
                    raise ShardError(f"{source}: truncated: member {info.name} runs past the end of the file")
                base = info.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                groups.setdefault(key, {})[ext] = (info.offset_data, info.size, None)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ShardError(f"{source}: not a readable tar shard: {err}") from None
    return [SampleRef(source, key, members) for key, members in groups.items()]


def load_index(sources: str | Path | Sequence[str | Path]) -> list[SampleRef]:
    """Sample references from index JSONs (``*.json``) and/or plain tars, in the given order."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    refs: list[SampleRef] = []
    for source in map(str, sources):
        if source.endswith(".json"):
            try:
                index = json.loads(_read_all(source))
            except (OSError, ValueError) as err:
                raise ShardError(f"{source}: cannot read shard index: {err}") from None
            for shard in index["shards"]:
                url = _join(source, shard["name"])
                for sample in shard["samples"]:
                    members = {ext: tuple(v) for ext, v in sample["members"].items()}
                    refs.append(SampleRef(url, sample["key"], members))
        else:
            refs.extend(scan_tar(source))
    return refs


# --------------------------------------------------------------------------- loader


class ClipDataset(IterableDataset):
    """HQ/LQ clip pairs from shards, shuffled per epoch, disjoint across DDP ranks and workers.

    Order of epoch e: a permutation of all samples seeded by (seed, e), identical on every rank.
    Rank r takes every world_size-th sample from position r, truncated so every rank has the
    same count (DDP steps stay in lockstep; at most world_size - 1 samples sit out an epoch).
    The rank's list, after skipping ``start_sample`` already consumed samples (resume), is cut
    into batches; batch b goes to DataLoader worker b % num_workers. A DataLoader with
    ``batch_size=None`` returns them in order b = 0, 1, 2, ..., so "samples consumed" is always a
    prefix of the rank's list and resuming is exact.

    Items are dicts ``{"hq": (B, C, T, H, W), "lq": (B, C, T, H, W), "meta": [dict] * B}``
    (float32 in [0, 1]); with ``batch_size=None`` single samples ``(C, T, H, W)`` and one meta dict.
    ``lq`` picks the LQ member: "lq", or "lq_noisefree" for incremental BFVR training.
    A corrupt sample raises :class:`ShardError` naming shard and key, or with
    ``on_error="skip"`` is logged and left out (counted in ``self.skipped`` of that process).
    """

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path],
        *,
        batch_size: int | None = 1,
        lq: str = "lq",
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        start_sample: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        on_error: Literal["raise", "skip"] = "raise",
    ):
        super().__init__()
        self.refs = load_index(sources)
        if not self.refs:
            raise ShardError(f"{sources}: no samples")
        missing = [r.key for r in self.refs if not {"hq", lq} <= {e.split(".")[0] for e in r.members}]
        if missing:
            raise ShardError(f"{sources}: samples without hq/{lq} members, e.g. {missing[:3]}")
        if rank is None or world_size is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                rank, world_size = 0, 1
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.batch_size, self.lq, self.shuffle, self.seed = batch_size, lq, shuffle, seed
        self.rank, self.world_size, self.drop_last, self.on_error = rank, world_size, drop_last, on_error
        self.epoch, self.start_sample = epoch, start_sample
        self.skipped: list[str] = []

    def set_epoch(self, epoch: int, start_sample: int = 0) -> None:
        """Select the epoch (and, on resume, how many samples this rank already consumed)."""
        self.epoch, self.start_sample = epoch, start_sample

    def state_dict(self, samples_consumed: int) -> dict[str, int]:
        """What a checkpoint stores to resume: the epoch and this rank's consumed samples."""
        return {"epoch": self.epoch, "start_sample": samples_consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = state.get("seed", self.seed)
        self.set_epoch(state["epoch"], state["start_sample"])

    def rank_order(self) -> list[int]:
        """Sample indices this rank reads this epoch, before the resume skip."""
        n = len(self.refs)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        per_rank = n // self.world_size
        return order[self.rank::self.world_size][:per_rank].tolist()

    def __len__(self) -> int:
        """Items (batches, or samples when batch_size is None) this rank yields this epoch."""
        remaining = max(0, len(self.rank_order()) - self.start_sample)
        if self.batch_size is None:
            return remaining
        full, rest = divmod(remaining, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def _load(self, reader: _ByteReader, ref: SampleRef) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = {}
            for ext, (offset, size, crc) in ref.members.items():
                name, _, fmt = ext.partition(".")
                if name not in ("hq", self.lq, "json"):
                    continue
                data = reader.read(ref.shard, offset, size)
                if len(data) != size:
                    raise ShardError(
                        f"{ref.shard}: sample {ref.key}: member {ext} truncated ({len(data)} of {size} bytes)")
                if crc is not None and zlib.crc32(data) != crc:
                    raise ShardError(f"{ref.shard}: sample {ref.key}: member {ext} is corrupt (CRC32 mismatch)")
                if name == "json":
                    out["meta"] = json.loads(data)
                else:
                    try:
                        out["lq" if name == self.lq else name] = frames_to_tensor(decode_frames(data, fmt or "mkv"))
                    except (ValueError, av.error.FFmpegError) as err:
                        raise ShardError(
                            f"{ref.shard}: sample {ref.key}: member {ext} does not decode: {err}") from None
            out.setdefault("meta", {})
            out["meta"]["key"] = ref.key
            if out["hq"].shape != out["lq"].shape:
                shapes = f"hq {tuple(out['hq'].shape)} != lq {tuple(out['lq'].shape)}"
                raise ShardError(f"{ref.shard}: sample {ref.key}: {shapes}")
            return out
        except (ShardError, OSError, ValueError) as err:
            if self.on_error == "raise":
                raise ShardError(str(err)) from None
            log.warning("skipping sample: %s", err)
            self.skipped.append(str(err))
            return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = self.rank_order()[self.start_sample:]
        size = self.batch_size or 1
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        worker = get_worker_info()
        if worker is not None:
            batches = batches[worker.id::worker.num_workers]
        reader = _ByteReader()
        try:
            for batch in batches:
                samples = [s for s in (self._load(reader, self.refs[i]) for i in batch) if s is not None]
                if not samples:
                    continue
                if self.batch_size is None:
                    yield samples[0]
                else:
                    yield {
                        "hq": torch.stack([s["hq"] for s in samples]),
                        "lq": torch.stack([s["lq"] for s in samples]),
                        "meta": [s["meta"] for s in samples],
                    }
        finally:
            reader.close()


def make_loader(
    sources: str | Path | Sequence[str | Path], *, batch_size: int | None = 1, num_workers: int = 0, **dataset_kwargs
) -> DataLoader:
    """A DataLoader over :class:`ClipDataset` (which batches itself, hence ``batch_size=None``).

    Call ``loader.dataset.set_epoch(epoch, start_sample)`` before iterating each epoch. Workers
    are not persistent on purpose: a persistent worker keeps the epoch it started with.
    """
    dataset = ClipDataset(sources, batch_size=batch_size, **dataset_kwargs)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity)


def _identity(item):
    return item
