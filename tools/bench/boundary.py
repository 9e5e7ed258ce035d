"""The training thread's time at an epoch boundary for ImageNet's 1,281,167 samples.

    python tools/benchmark.py boundary --data=DATASET [--batch_size=256] [--repeats=2]

A loader over DATASET (any raw dataset: only its statistics and shapes are used) is given a
stand-in train split of 1,281,167 samples in 1,252 shards of 1,024 (no pixels are read: only the
epoch's planning runs), then asked for the first step of epoch 1 after the middle of epoch 0,
two ways: ``inline``, the next epoch planned on the training thread when the feed reaches it (what
the loader did before), and ``ahead``, planned on the loader's planner thread from the middle of
the epoch (what it does). Prints the training thread's CPU and wall time of that step, and in
``ahead`` the longest the training thread waited for the GIL while the planner worked.
"""
from __future__ import annotations

import time

import numpy as np

from pipeline.errors import UsageError
from pipeline.load.dataset import Split

N, SHARD = 1_281_167, 1024


class _Split:
    """Only what the epoch's planning reads of a split: shard starts, labels, locate_many."""

    def __init__(self):
        self.starts = np.minimum(np.arange(0, N + SHARD, SHARD), N).astype(np.int64)
        self.labels = np.random.default_rng(0).integers(0, 1000, N).astype(np.int16)

    def __len__(self):
        return N

    locate_many = Split.locate_many  # the loader's own search over the shards' first indices


def one(data: str, mode: str, batch_size: int, lighting: float, mean: str) -> str:
    import pipeline
    from pipeline.load.sampler import Sampler

    loader = pipeline.build_loader(data, "train", batch_size=batch_size, crop=1, device="cpu",
                                   lighting=lighting, mean=mean)
    loader.data = _Split()
    loader.sampler = Sampler(N, batch_size, 0, 1, 0, shuffle=True, drop_last=True)
    loader._steps_with_data = None
    middle = loader._dali_steps() // 2
    loader.inputs(0, 0)
    gap = 0.0
    if mode == "inline":
        loader._plan_ahead = lambda epoch: None
        loader.inputs(0, middle)
    else:
        loader.inputs(0, middle)
        last = time.perf_counter()
        while not loader._ahead[1].done():  # the training thread, busy in Python meanwhile
            now = time.perf_counter()
            gap, last = max(gap, now - last), now
    cpu, wall = time.thread_time(), time.perf_counter()
    loader.inputs(1, 0)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    loader.close()
    extra = f", longest GIL wait meanwhile {gap * 1e3:.1f} ms" if mode == "ahead" else ""
    return (f"{mode:6s} mean={mean:7s} lighting={lighting}: first step of epoch 1 on the training "
            f"thread {cpu * 1e3:7.1f} ms CPU, {wall * 1e3:7.1f} ms wall{extra}")


def boundary(data: str, batch_size: int = 256, repeats: int = 2) -> None:
    """The training thread's time at an epoch boundary for ImageNet's sample count, the next
    epoch planned inline against ahead (see tools/bench/boundary.py).

    data: any raw dataset (only its statistics are read)
    batch_size: samples a step
    repeats: times each way is measured
    """
    for name, value in (("batch_size", batch_size), ("repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value!r}")
    for _ in range(repeats):
        for mode in ("inline", "ahead"):
            for lighting, mean in ((0.0, "channel"), (0.1, "pixel")):
                print(one(data, mode, batch_size, lighting, mean), flush=True)
