"""Gathering a batch from the memory-mapped shards into a ring of reusable buffers.

A batch of raw samples is copied once, from the shard mappings (page cache) into one dense
(B, S, S, 3) uint8 buffer that DALI reads in place (external_source with ``no_copy``). The copy
runs in ``threads`` worker threads, each taking a contiguous part of the batch in one compiled
call that holds no GIL; the training thread only hands them slices of the epoch's (shard, row)
arrays, made once an epoch in the epoch's order (loader.py): its cost per batch is one call per
thread, whatever the batch size. Buffers are page-locked when the graph runs on CUDA, and the
feed hands them to DALI marked so (feed.py), so DALI's host-to-device copy of a batch can run
asynchronously, straight from the ring.

A slot is taken when a batch is gathered and given back once DALI has read it: at once when its
outputs were synchronised with the host (the CPU graph), else when the CUDA event recorded after
the consumer's copy of those outputs has completed (DALI's input copy precedes its outputs, which
precede that copy on the consumer's stream). A batch in flight is never overwritten.

Where the graph needs no pixel outside each sample's crop window (raw payloads, one window per
sample, no full-size mean image: the loader's ``precrop``), the gather copies only that window,
mirrored where the sample is flipped: byte selection, no arithmetic, so DALI is left the
normalisation alone, without per-sample crop and mirror arguments (those cost DALI ~1-2 us per
sample each, which at 32 px is more than the pixels), and a smaller batch crosses to the GPU.

JPEG payloads differ in length: a batch is copied, by the same compiled threads, into one dense
(B, W) array, each payload followed by zeros up to W (libjpeg-turbo stops at the EOI marker, so
the padding is never read as image data; tests/test_loader.py checks every window of an epoch
against Pillow). W grows with the longest payload met, a slot at a time. One tensor instead of a
list of B views: the training thread's time a batch of 256 went from 2.7 to 1.2 ms, most of it
DALI's per-sample handling of the list (BENCHMARKS.md, issue 26).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import typed

# bytes: the smallest share of a batch worth another worker thread. A copy runs at ~2.5-3.5 GB/s
# here (3 MB of 32 px images: 0.9 ms; windows with 84-byte rows: 2.4 MB in 1.0 ms), so 1 MB is
# ~0.3 ms, above the ~0.2 ms of waking a thread; below it one worker copies the whole batch.
MIN_PART = 1 << 20
# bytes: a batch smaller than this is copied by the training thread at once (<= ~0.1 ms): a
# worker's wake-up and hand-over would cost the batch more wall time than the copy (at batch 64
# of 28 px windows, 150 KB: 10-35 % fewer images/s on 2 cores through a worker)
INLINE = 256 << 10
# batches whose released outputs stay held before a worker drops them: the consumer holds the
# batch just yielded and, until its loop variable is rebound, the one before it
HELD = 2


@numba.njit(nogil=True, cache=True)
def _copy_rows(payloads, shard, row, out, lo, hi):  # pragma: no cover - compiled
    """out[i] = payloads[shard[i]][row[i]] for i in lo..hi-1; rows of ``out.shape[1]`` bytes."""
    n = out.shape[1]
    for i in range(lo, hi):
        src = payloads[shard[i]]
        r = row[i]
        for b in range(n):
            out[i, b] = src[r, b]


@numba.njit(nogil=True, cache=True)
def _copy_windows(payloads, shard, row, x, y, flip, size, out, lo, hi):  # pragma: no cover - compiled
    """out[i] = the c x c window at (x[i], y[i]) of payloads[shard[i]][row[i]] (an HWC size x
    size x 3 image as one row of bytes), mirrored left-right where flip[i]; out is (n, c, c * 3)."""
    c = out.shape[1]
    w = c * 3
    one, two = np.uint64(1), np.uint64(2)
    for i in range(lo, hi):
        src = payloads[shard[i]][row[i]]
        for r in range(c):
            base = ((y[i] + r) * size + x[i]) * 3
            s = src[base:base + w]
            d = out[i, r]
            if flip[i]:
                for col in range(c):
                    # unsigned indices: no negative-index test per byte, so LLVM vectorises this
                    # (7x faster than signed ones at 224 px)
                    j, o = np.uint64(3 * (c - 1 - col)), np.uint64(3 * col)
                    d[o] = s[j]
                    d[o + one] = s[j + one]
                    d[o + two] = s[j + two]
            else:
                for b in range(w):
                    d[b] = s[b]


@numba.njit(nogil=True, cache=True)
def _longest(offsets, shard, row):  # pragma: no cover - compiled
    """The longest payload among samples (shard[i], row[i]), ``offsets[k]`` cutting shard k's."""
    m = 0
    for i in range(len(shard)):
        o = offsets[shard[i]]
        m = max(m, o[row[i] + 1] - o[row[i]])
    return m


@numba.njit(nogil=True, cache=True)
def _copy_payloads(payloads, offsets, shard, row, out, lo, hi):  # pragma: no cover - compiled
    """out[i] = sample (shard[i], row[i])'s payload, then zeros to the end of the row."""
    w = out.shape[1]
    for i in range(lo, hi):
        o = offsets[shard[i]]
        a, n = o[row[i]], o[row[i] + 1] - o[row[i]]
        src = payloads[shard[i]][a:a + n]
        d = out[i]
        for j in range(n):
            d[j] = src[j]
        for j in range(n, w):
            d[j] = 0


class Batch:
    """One gathered batch: ``images`` (a slot's first len(idx) rows: images, windows or
    zero-padded JPEG files), the slot to give back, and the futures that fill it."""

    def __init__(self, images, slot: int | None, futures):
        self.images, self.slot, self.futures = images, slot, futures

    def wait(self):
        for f in self.futures:
            f.result()  # re-raises a worker's error here, on the training thread
        return self.images


class Gatherer:
    def __init__(self, split, batch_size: int, threads: int, slots: int, pinned: bool,
                 crop: int | None = None):
        """``crop``: copy each sample's crop window (``submit``'s ``window``), not the whole image."""
        self.split, self.raw, self.crop = split, split.encoding == "raw", crop
        self.threads, self.pinned = max(1, threads), pinned
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gather")
        self.free = list(range(slots))
        self.pending = []  # (event, slot, keep): given back once the CUDA event has completed
        self._held = deque()  # outputs of batches released without an event, dropped by a worker
        self.buffers, self._keep = [], []
        if self.raw:
            s = self.size = split.size
            self.record = s * s * 3  # bytes per stored sample
            side = crop or s
            if split.remote:  # shards mapped as the cache brings them (bound in submit)
                self._empty = np.zeros((0, self.record), np.uint8)
                self._empty.setflags(write=False)  # the type of the read-only shard mappings
                self._bound = [None] * len(split.shards)
                self.payloads = typed.List([self._empty for _ in split.shards])
                for k, sh in enumerate(split.shards):
                    sh.on_unmap.append(lambda k=k: self._unbind(k))
            else:
                self.payloads = typed.List([np.asarray(sh.payload).reshape(sh.count, self.record)
                                            for sh in split.shards])
            for _ in range(slots):
                buf = _host_buffer((batch_size, side, side, 3), pinned)
                self._keep.append(buf)  # the torch tensor owns the (page-locked) memory
                self.buffers.append(buf.numpy())
        else:  # JPEG: payloads cut by each shard's offsets; slots as wide as the longest one met
            self.batch_size = batch_size
            self._empty = np.zeros(0, np.uint8)
            self._empty.setflags(write=False)
            self._no_offsets = np.zeros(1, np.int64)
            if split.remote:
                self._bound = [None] * len(split.shards)
                self.payloads = typed.List([self._empty for _ in split.shards])
                self.offsets = typed.List([self._no_offsets for _ in split.shards])
                for k, sh in enumerate(split.shards):
                    sh.on_unmap.append(lambda k=k: self._unbind(k))
            else:
                self.payloads = typed.List([np.asarray(sh.payload) for sh in split.shards])
                self.offsets = typed.List([sh.offsets.astype(np.int64) for sh in split.shards])
            self._keep, self.buffers = [None] * slots, [None] * slots

    def submit(self, shard: np.ndarray, row: np.ndarray, window=None) -> Batch:
        """Start gathering the samples at rows ``row`` of shards ``shard`` (the split's
        ``locate_many``); returns at once. ``window``: (x, y, flip) arrays, one entry per sample,
        when the gatherer crops."""
        if self.split.remote:
            self._bind(np.unique(shard).tolist())
        slot = self._take_slot()
        n = len(shard)
        if not self.raw:
            width = int(_longest(self.offsets, shard, row))
            if self.buffers[slot] is None or self.buffers[slot].shape[1] < width:
                buf = _host_buffer((self.batch_size, width + width // 4), self.pinned)  # room to grow
                self._keep[slot], self.buffers[slot] = buf, buf.numpy()
        out = self.buffers[slot][:n]
        if not self.raw:
            kernel, args = _copy_payloads, (self.payloads, self.offsets, shard, row, out)
        elif self.crop is None:
            kernel, args = _copy_rows, (self.payloads, shard, row, out.reshape(n, self.record))
        else:
            x, y, flip = window
            kernel, args = _copy_windows, (self.payloads, shard, row, x, y, flip, self.size,
                                           out.reshape(n, self.crop, self.crop * 3))
        # the worker that copies also drops the oldest outputs held (``release``): freed there
        drop = [self._held.popleft()] if len(self._held) > HELD else []
        if out.nbytes < INLINE:  # at most ~0.1 ms here, less than handing it to a thread
            _gather(kernel, args, 0, n, drop)
            return Batch(out, slot, [])
        # On the worker threads, so the training thread's time a batch does not grow with the
        # batch size; at least MIN_PART bytes a thread beyond the first.
        parts = max(1, min(self.threads, n, out.nbytes // MIN_PART))
        futures = [self.pool.submit(_gather, kernel, args, n * k // parts, n * (k + 1) // parts,
                                    drop if k == 0 else [])
                   for k in range(parts)]
        return Batch(out, slot, futures)

    def _bind(self, shards: list[int]) -> None:
        """Remote split: the shards of a batch mapped from the cache (waiting for a fetch that the
        prefetcher has not finished) and put in the compiled copy's list."""
        for k in shards:
            shard = self.split.shards[k]
            payload = shard.payload
            if self._bound[k] is not payload:
                if self.raw:
                    self.payloads[k] = np.asarray(payload).reshape(-1, self.record)
                else:
                    self.payloads[k] = np.asarray(payload)
                    self.offsets[k] = shard.offsets.astype(np.int64)
                self._bound[k] = payload

    def _unbind(self, k: int) -> None:
        """The cache evicted shard k (no batch in flight reads it): drop its mapping here too,
        so the file's blocks are freed."""
        if self._bound[k] is not None:
            self.payloads[k] = self._empty
            if not self.raw:
                self.offsets[k] = self._no_offsets
            self._bound[k] = None

    def release(self, batch: Batch, event=None, keep=None) -> None:
        """DALI is done with ``batch`` once ``event`` (a torch.cuda.Event, or None: now) has
        completed: its slot may be refilled then. ``keep`` (DALI's outputs of the batch) is held
        until the same moment, so DALI cannot reuse their memory while the consumer reads it.
        Without an event (the CPU graph, whose outputs the consumer's tensors are) ``keep`` is
        held for HELD more batches, then dropped by a worker thread: by then the consumer has
        usually dropped the batch, so the worker's drop is the last and frees the memory (an
        munmap: ~0.13 ms for 10 MB here), not the training thread's."""
        if event is not None:
            self.pending.append((event, batch.slot, keep))
        else:
            if batch.slot is not None:
                self.free.append(batch.slot)
            if keep is not None:
                self._held.append(keep)
        batch.slot = None

    def _take_slot(self) -> int:
        done = [p for p in self.pending if p[0].query()]
        if not self.free and self.pending and not done:
            self.pending[0][0].synchronize()  # the host is a ring ahead of the device: wait for it
            done = [self.pending[0]]
        for p in done:
            self.pending.remove(p)
            if p[1] is not None:
                self.free.append(p[1])
        if not self.free:
            raise RuntimeError("gather: every buffer is in flight (a slot was not given back)")
        return self.free.pop(0)

    def close(self) -> None:
        for event, _, _ in self.pending:
            event.synchronize()  # nothing DALI or the consumer may still read is freed under them
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._held.clear()


def _gather(kernel, args, lo: int, hi: int, drop: list) -> None:
    """A worker's share of a batch: ``kernel`` over samples lo..hi-1, then ``drop`` cleared here."""
    try:
        kernel(*args, lo, hi)
    finally:
        drop.clear()


def _host_buffer(shape, pinned: bool):
    """A uint8 host buffer as a torch tensor (owner of the memory), page-locked for CUDA."""
    import torch

    return torch.empty(shape, dtype=torch.uint8, pin_memory=pinned)
