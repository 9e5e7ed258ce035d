"""How long training waited for data: the ``data_wait_frac`` of metrics.jsonl.

    wait = DataWait(device)
    for images, labels in wait.timed(loader):  # each next() is timed
        ...
    wait.seconds()  # after a host sync (the log's .item()): reads the CUDA events

On the CPU the wait is the host's time blocked in ``next(loader)``. On CUDA that would be wrong: a
host blocked in the loader (DALI's host side, a full ring) while the device still runs the steps
queued before is not a device waiting for data, and a compute-bound run would be called
data-bound. There the wait is the time the device's stream sat idle between two CUDA events
recorded around ``next(loader)``: the stream reaches the second one only after the loader's
work on it (the wait for DALI's outputs, the copy) and after the host got round to queueing
it, so the gap is device time lost to the loader and to nothing else.
"""
from __future__ import annotations

import time

import torch


class DataWait:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.total = 0.0  # seconds, events already read
        self._pairs = []  # (start, end) CUDA events not yet read
        self._t0 = self._start = None

    def timed(self, iterable):
        """Yield ``iterable``'s items, timing each ``next`` (the loop body is not timed)."""
        it = iter(iterable)
        while True:
            self._begin()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self._end()
            yield item

    def seconds(self) -> float:
        """Seconds waited so far. On CUDA it reads the events: call it after a host sync (else it
        blocks until the device has reached them)."""
        if self._pairs:
            self._pairs[-1][1].synchronize()
            self.total += sum(a.elapsed_time(b) for a, b in self._pairs) / 1000.0
            self._pairs.clear()
        return self.total

    def reset(self) -> None:
        self.seconds()
        self.total = 0.0

    def _begin(self):
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def _end(self):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pairs.append((self._start, end))
        else:
            self.total += time.perf_counter() - self._t0
