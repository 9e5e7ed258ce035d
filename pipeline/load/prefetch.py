"""Which shards of a remote split the loader needs, fetched ahead of the epoch's order.

The loader knows every batch of an epoch in advance (pipeline/load/sampler.py), so the shards each
global batch touches are known too: the pairs (step, shard) of an epoch, computed once per epoch in
one vectorised pass. At each step the prefetcher takes the shards in order of first need from the
oldest batch in flight on, as many as fit under the cache limit (all of them without one: the
first epoch then downloads the split in the order it is read), protects that set from eviction,
fetches what is missing on the cache's threads, in that order, and unmaps the shards no batch in
flight or ahead needs (so that the cache may evict them). Batches are global batches, not this
rank's share: every rank of a node computes the same sets, so one rank never evicts a shard another
still reads.

A cache limit smaller than what the batches in flight touch would refetch or wait forever: it is
refused at the start (``needed_bytes``), naming the figure and data_order=block, whose blocks of
shards fit the cache (sampler.py).
"""
from __future__ import annotations

import itertools

import numpy as np

_ids = itertools.count()


def step_shards(split, order: np.ndarray, global_batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair_step, pair_shard, starts): every (global step, shard) an epoch touches, sorted by
    step, and where each step's pairs begin (then their total): step s's shards are
    ``pair_shard[starts[s]:starts[s + 1]]``."""
    shard = split.locate_many(order)[0]
    n = len(split.shards)
    key = np.unique((np.arange(len(order)) // global_batch) * n + shard)
    step = key // n
    steps = int(step[-1]) + 1 if len(step) else 0
    return step, key % n, np.searchsorted(step, np.arange(steps + 1))


def needed_bytes(split, order: np.ndarray, global_batch: int, window: int) -> tuple[int, int]:
    """(bytes, step): the most shard bytes any ``window`` consecutive global batches touch, and the
    first step of that window."""
    _, shard, starts = step_shards(split, order, global_batch)
    sizes = np.array([e["bytes"] for e in split.entries], np.int64)
    steps = len(starts) - 1
    best, at = 0, 0
    for s in range(max(1, steps - window + 1)):
        need = int(sizes[np.unique(shard[starts[s]:starts[min(steps, s + window)]])].sum())
        if need > best:
            best, at = need, s
    return best, at


class Prefetcher:
    def __init__(self, split, global_batch: int, behind: int):
        self.split, self.cache, self.global_batch = split, split.cache, global_batch
        self.behind = behind  # batches that may still be in flight behind the newest one put
        self.id = next(_ids)
        self.sizes = np.array([e["bytes"] for e in split.entries], np.int64)
        self.epoch = None
        self.tail = set()      # the previous epoch's last batches' shards (still in flight)
        self.refresh_at = 0    # the step at which the target is computed again
        # (epoch, the cache's counters when the epoch's first batch was planned): every batch of
        # the epoch before had its shards then, so differences are fetches per epoch
        self.history = []

    def at(self, epoch: int, step: int, order: np.ndarray) -> None:
        """The loader is about to gather global step ``step`` of ``epoch``."""
        if epoch != self.epoch:
            self.history.append((epoch, self.cache.stats()))
            if self.epoch is not None:
                steps = len(self.starts) - 1
                self.tail = set(self._shards(max(0, steps - self.behind), steps).tolist())
            self.epoch = epoch
            self.step, self.shard, self.starts = step_shards(self.split, order, self.global_batch)
            self.refresh_at = 0
        elif step >= self.behind:
            self.tail = set()
        if step < self.refresh_at:
            return
        # the previous epoch's batches still in flight hold their shards: the rest of the limit
        # is this epoch's
        held = int(self.sizes[list(self.tail)].sum()) if self.tail else 0
        target, until = self._target(max(0, step - self.behind), held)
        keep = set(target.tolist()) | self.tail
        entries = self.split.entries
        self.cache.protect(self.id, {entries[k]["sha256"] for k in keep})
        for k, shard in enumerate(self.split.shards):
            if shard.mapped and k not in keep:
                shard.unmap()  # no batch in flight or ahead reads it: the cache may evict it
        for k in target.tolist():
            self.cache.fetch(entries[k])  # in order of need; present or pending ones are skipped
        # computed again halfway through what the target covers (every step when it covers few)
        self.refresh_at = step + max(1, (until - step) // 2)

    def _shards(self, lo: int, hi: int) -> np.ndarray:
        hi = min(hi, len(self.starts) - 1)
        return np.unique(self.shard[self.starts[lo]:self.starts[hi]]) if hi > lo else np.zeros(0, np.int64)

    def _target(self, lo: int, held: int = 0) -> tuple[np.ndarray, int]:
        """(shards in order of first need from step ``lo`` that fit under the limit less
        ``held`` bytes, the step up to which they cover every batch)."""
        steps = len(self.starts) - 1
        limit = None if self.cache.limit is None else self.cache.limit - held
        span = 8
        while True:
            hi = min(steps, lo + span)
            seg = self.shard[self.starts[lo]:self.starts[hi]]
            ks, first = np.unique(seg, return_index=True)
            ks = ks[np.argsort(first, kind="stable")]
            first = np.sort(first)
            if limit is not None:
                fit = int(np.searchsorted(np.cumsum(self.sizes[ks]), limit, side="right"))
                if fit < len(ks):  # the limit cuts here: cover the steps before the first cut shard
                    cut_pos = self.starts[lo] + first[fit]
                    until = int(self.step[cut_pos])
                    return ks[:max(fit, 1)], until
            if hi == steps:
                return ks, steps
            span *= 2

    def per_epoch(self) -> list[dict]:
        """What each completed epoch fetched: {epoch, shards_fetched, bytes_fetched, bytes_refetched}."""
        rows = []
        for (e, a), (_, b) in zip(self.history, self.history[1:]):
            rows.append({"epoch": e, **{k: b[k] - a[k] for k in ("shards_fetched", "bytes_fetched",
                                                                 "bytes_refetched")}})
        return rows

    def close(self) -> None:
        self.cache.release(self.id)
