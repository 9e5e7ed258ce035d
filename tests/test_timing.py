"""The trainer's data-wait measure (trainer/timing.py): a slow loader is data wait, a slow step is
not. The CPU path here; the CUDA path (device idle time, a host blocked in the loader behind
queued work is not waiting) is in tests/test_gpu.py."""
import time

import torch

from trainer.timing import DataWait


class Slow:
    """``n`` items, each ``next`` taking ``delay`` seconds."""

    def __init__(self, n, delay):
        self.n, self.delay = n, delay

    def __iter__(self):
        for i in range(self.n):
            time.sleep(self.delay)
            yield i


def run(loader_delay, step_delay, n=8):
    wait = DataWait(torch.device("cpu"))
    t0 = time.perf_counter()
    seen = []
    for item in wait.timed(Slow(n, loader_delay)):
        time.sleep(step_delay)
        seen.append(item)
    return seen, wait.seconds(), time.perf_counter() - t0


def test_a_slow_loader_is_data_wait():
    seen, waited, elapsed = run(0.05, 0.0)
    assert seen == list(range(8))
    assert waited >= 8 * 0.05 and waited / elapsed > 0.9


def test_a_slow_step_is_not_data_wait():
    seen, waited, elapsed = run(0.0, 0.05)
    assert seen == list(range(8))
    assert waited / elapsed < 0.05 and elapsed >= 8 * 0.05


def test_the_loop_breaking_early_stops_the_clock_and_closes_the_loader():
    closed = []

    def loader():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    wait = DataWait(torch.device("cpu"))
    for i in wait.timed(loader()):
        if i == 2:
            break
    time.sleep(0.05)
    assert wait.seconds() < 0.04  # the time after the break is nobody's wait
    import gc
    gc.collect()
    assert closed == [True]
