"""Which samples each data-parallel rank gets at each step, and every random decision: pure NumPy.

Two rules make a run independent of its dp x mp layout (and resumable on another GPU count):

- the order of an epoch is a permutation drawn from (seed, epoch); global batch k is
  ``order[k*G:(k+1)*G]`` for the global batch size G = batch_size * dp_size, and rank r takes the
  r-th contiguous slice of it. The union over ranks of step k depends only on (seed, epoch, G);
- the random decisions of sample i (crop window, flip, lighting alpha) are drawn for all samples
  at once from (seed, epoch) and indexed by i, never by rank or position in a stream.

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
                 shuffle: bool, drop_last: bool):
        self.n, self.batch_size, self.dp_rank, self.dp_size = n, batch_size, dp_rank, dp_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.global_batch = batch_size * dp_size

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        full, rest = divmod(self.n, self.global_batch)
        return full + (rest > 0 and not self.drop_last)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch, _ORDER]).permutation(self.n)

    def global_indices(self, order: np.ndarray, step: int) -> np.ndarray:
        return order[step * self.global_batch:(step + 1) * self.global_batch]

    def indices(self, order: np.ndarray, step: int) -> np.ndarray:
        """This rank's sample indices at ``step``."""
        batch = self.global_indices(order, step)
        if len(batch) == self.global_batch:
            return batch[self.dp_rank * self.batch_size:(self.dp_rank + 1) * self.batch_size]
        return np.array_split(batch, self.dp_size)[self.dp_rank]  # the last, partial step


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
