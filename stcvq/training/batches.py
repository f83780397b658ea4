"""The training loop's data sources (:class:`stcvq.training.loop.ClipSource`): shards and in-memory clips.

The loop asks for "epoch e, rank r of w, micro-batches of b clips" and keeps count of the
micro-batches it consumed, so resuming is asking again and skipping. :class:`ShardClips`
answers with a :class:`stcvq.data.shards.ClipDataset` built for exactly that request (seeded per
epoch, disjoint across ranks, last partial batch dropped so every rank steps in lockstep);
:class:`TensorClips` with a seeded permutation of clips held in memory (tests, benchmarks).
Each source has a ``fingerprint()`` of its clips, which the run fingerprint records
(:mod:`stcvq.training.provenance`): new data starts a run over instead of resuming it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from stcvq.data.shards import ClipDataset, _identity, _read_all, load_index
from stcvq.training.provenance import tensors_fingerprint


class ShardClips:
    """A deterministic ClipSource over shard indexes (or tars). ``lq`` picks the LQ member
    ("lq", or "lq_noisefree" for the first step of incremental BFVR training)."""

    def __init__(self, sources: str | Path | Sequence[str | Path], *, lq: str = "lq", seed: int = 0,
                 num_workers: int = 0):
        self.sources, self.lq, self.seed, self.num_workers = sources, lq, seed, num_workers
        self.num_samples = len(ClipDataset(sources, lq=lq, shuffle=False, rank=0, world_size=1).refs)

    def __len__(self) -> int:
        return self.num_samples

    def fingerprint(self) -> str:
        """SHA-256 over the bytes of each index (or plain tar) in ``sources``, in order. An index
        lists every member's size and CRC32, so it changes whenever a clip does; a plain tar is
        read whole."""
        sources = [self.sources] if isinstance(self.sources, (str, Path)) else self.sources
        digest = hashlib.sha256()
        for source in map(str, sources):
            data = _read_all(source)
            digest.update(f"{len(data)}\0".encode())
            digest.update(data)
        return digest.hexdigest()

    def batches(self, epoch: int, rank: int, world_size: int, batch_size: int) -> Iterator[dict[str, Any]]:
        dataset = ClipDataset(self.sources, batch_size=batch_size, lq=self.lq, seed=self.seed, epoch=epoch,
                              rank=rank, world_size=world_size, drop_last=True)
        if self.num_workers == 0:
            yield from dataset
        else:
            yield from DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_identity)


class TensorClips:
    """In-memory clips (N, C, T, H, W) as a deterministic ClipSource: each epoch a seeded
    permutation, cut into global batches of ``batch_size * world_size``; process ``rank`` takes
    its slice of each. So one process with batch B and two with B/2 see the same global batches."""

    def __init__(self, clips: torch.Tensor, seed: int = 0, key: str = "hq",
                 extra: dict[str, torch.Tensor] | None = None):
        self.clips, self.seed, self.key, self.extra = clips, seed, key, extra or {}

    def __len__(self) -> int:
        return len(self.clips)

    def fingerprint(self) -> str:
        """SHA-256 over the seed and every tensor (``key``'s and the extras'), names and shapes included."""
        return tensors_fingerprint({self.key: self.clips, **self.extra}, header=f"seed {self.seed}")

    def batches(self, epoch: int, rank: int, world_size: int, batch_size: int) -> Iterator[dict[str, Any]]:
        order = torch.randperm(len(self.clips), generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        chunk = batch_size * world_size
        for start in range(0, len(order) - chunk + 1, chunk):
            idx = order[start + rank * batch_size : start + (rank + 1) * batch_size]
            batch = {self.key: self.clips[idx]}
            batch.update({k: v[idx] for k, v in self.extra.items()})
            yield batch


def has_member(sources: str | Path | Sequence[str | Path], name: str) -> bool:
    """Whether every sample of the shards carries member ``name`` (e.g. "lq_noisefree")."""
    refs = load_index(sources)
    return bool(refs) and all(any(ext.split(".")[0] == name for ext in r.members) for r in refs)


def shard_batches(sources: str | Path | Sequence[str | Path], *, batch_size: int = 4,
                  lq: str = "lq") -> Callable[[], Iterable[dict[str, Any]]]:
    """``val_batches`` for :func:`stcvq.training.loop.train`: every clip once, in index order, each call."""

    def batches() -> Iterable[dict[str, Any]]:
        return ClipDataset(sources, batch_size=batch_size, lq=lq, shuffle=False, rank=0, world_size=1)

    return batches


__all__ = ["ShardClips", "TensorClips", "has_member", "shard_batches"]
