"""Which samples each data-parallel rank gets at each step, and every random decision: pure NumPy.

Two rules make a run independent of its dp x mp layout (and resumable on another GPU count):

- the order of an epoch is a permutation drawn from (seed, epoch); global batch k is
  ``order[k*G:(k+1)*G]`` for the global batch size G = batch_size * dp_size, and rank r takes the
  r-th contiguous slice of it. The union over ranks of step k depends only on (seed, epoch, G);
- the random decisions of sample i (crop window, flip, lighting alpha) are drawn for all samples
  at once from (seed, epoch) and indexed by i, never by rank or position in a stream.

Two orders (``data_order``): ``global``, one permutation of the whole split; ``block``, for a
shard cache smaller than the split (pipeline/store.py): the epoch permutes the shards, takes them
in blocks of ``block_shards`` and permutes the samples within each block (MosaicML Streaming's
py1b), so a block's shards are all a stretch of batches reads. Both depend on (seed, epoch) and the
dataset's shard sizes only: the rules above hold in either.

Exactly once: over an epoch every sample appears once across ranks. With ``drop_last`` the last
partial global batch is dropped (train default); otherwise it is split as evenly as possible,
so the ranks of the last step hold sizes that differ by at most one (possibly zero samples on some
ranks); nothing is ever padded or duplicated. All ranks have the same number of steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_ORDER, _DECISIONS = 0, 1  # stream ids under (seed, epoch)


@dataclass(frozen=True)
class Decisions:
    """Per-sample random decisions of one epoch, indexed by sample index."""
    crop_x: np.ndarray  # int64, crop position: left edge of the window in pixels, 0..S-crop
    crop_y: np.ndarray  # int64, crop position: top edge
    flip: np.ndarray    # bool, horizontal mirror
    alpha: np.ndarray   # float64 (N, 3), PCA lighting coefficients ~ N(0, lighting)


class Sampler:
    def __init__(self, n: int, batch_size: int, dp_rank: int, dp_size: int, seed: int,
                 shuffle: bool, drop_last: bool, shard_starts=None, block_shards: int = 0):
        self.n, self.batch_size, self.dp_rank, self.dp_size = n, batch_size, dp_rank, dp_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.global_batch = batch_size * dp_size
        self.shard_starts, self.block_shards = shard_starts, block_shards  # block order when > 0

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        full, rest = divmod(self.n, self.global_batch)
        return full + (rest > 0 and not self.drop_last)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        rng = np.random.default_rng([self.seed, epoch, _ORDER])
        if self.block_shards:
            return block_order(self.shard_starts, self.block_shards, rng)
        return rng.permutation(self.n)

    def global_indices(self, order: np.ndarray, step: int) -> np.ndarray:
        return order[step * self.global_batch:(step + 1) * self.global_batch]

    def bounds(self, step: int) -> tuple[int, int]:
        """(a, b): this rank's samples at ``step`` are ``order[a:b]``, in any epoch's order. A full
        global batch gives each rank ``batch_size``; the last, partial one is split as evenly as
        possible, the first ranks taking one more (numpy's array_split)."""
        start = step * self.global_batch
        q, r = divmod(max(0, min(self.global_batch, self.n - start)), self.dp_size)
        a = start + self.dp_rank * q + min(self.dp_rank, r)
        return a, a + q + (self.dp_rank < r)

    def indices(self, order: np.ndarray, step: int) -> np.ndarray:
        """This rank's sample indices at ``step`` (a view of ``order``)."""
        a, b = self.bounds(step)
        return order[a:b]


def decisions(n: int, seed: int, epoch: int, size: int, crop: int, flip: bool, lighting: float,
              random: bool) -> Decisions:
    """Random decisions for all n samples of an epoch (train), or the fixed centre ones (val)."""
    if not random:
        off = np.full(n, (size - crop) // 2, np.int64)
        return Decisions(off, off.copy(), np.zeros(n, bool), np.zeros((n, 3)))
    rng = np.random.default_rng([seed, epoch, _DECISIONS])
    crop_x = rng.integers(0, size - crop + 1, n)
    crop_y = rng.integers(0, size - crop + 1, n)
    heads = rng.random(n) < 0.5
    alpha = rng.normal(0.0, 1.0, (n, 3)) * lighting  # drawn even when lighting=0: same stream
    return Decisions(crop_x, crop_y, heads & flip, alpha)


def block_order(starts: np.ndarray, block_shards: int, rng) -> np.ndarray:
    """The shards permuted, cut into blocks of ``block_shards``, the samples of each block permuted:
    every index once. ``starts``: each shard's first index, then the total."""
    starts = np.asarray(starts, np.int64)
    counts = np.diff(starts)
    shards = rng.permutation(len(counts))
    # the sample indices of the shards in permuted order, in one vectorised pass
    lengths = counts[shards]
    firsts = np.repeat(starts[shards] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    flat = firsts + np.arange(int(lengths.sum()))
    bounds = np.concatenate([[0], np.cumsum(lengths)[block_shards - 1::block_shards]])
    if bounds[-1] != len(flat):
        bounds = np.append(bounds, len(flat))
    return np.concatenate([rng.permutation(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]) \
        if len(flat) else flat
