"""One DALI pipeline fed batch by batch, for a loader's whole life.

    feed.start(key)         iterate from ``key``: batches run ahead for another position are dropped
    feed.fill()             keep ``prefetch`` batches running in DALI and one more gathering
    feed.put(key, idx, arrays)  start gathering a batch (worker threads) with its per-batch arrays
    feed.schedule()         hand the oldest gathered batch to DALI (feed_input) and run it
    feed.get(stream)        (key, outputs) of the oldest running batch, bound to ``stream`` (CUDA)
    feed.done(event, keep)  the consumer has what it needs of those outputs once ``event`` completes
    feed.drain()            finish and drop whatever is in flight (an abandoned epoch)
    feed.close()            drain, stop the threads, destroy the pipeline (idempotent)

Epochs only change what is put; the graph is built once. DALI's own prefetch queue is one deep:
the feed keeps the look-ahead by scheduling several runs, each tagged with its ``key``
(epoch, step), so it knows exactly which batches are in flight: it goes on into the next epoch
at an epoch's end and drops those batches only if the next iteration starts elsewhere. The feed
owns this run-ahead (its cursor and queues); the loader gives it the order of the keys
(``after``), what each key feeds (``inputs``) and where its samples are (``where``: shard, row
and, where the gatherer crops, each sample's window).
"""
from __future__ import annotations

from collections import deque

from nvidia.dali.tensors import TensorListCPU

from .gather import Gatherer


class Feed:
    def __init__(self, pipe, gatherer: Gatherer, inputs, where, after, prefetch: int,
                 sequences: int = 0):
        """``where``: key -> (shard, row, window) of the key's samples, ``window`` (x, y, flip)
        for a gatherer that crops, else None; ``sequences`` > 0: each batch is fed as that many
        sequences of samples (FHWC; fewer where the batch size is not a multiple), every array
        reshaped alike (graphs.precropped_pipeline)."""
        self.pipe, self.gatherer, self.where = pipe, gatherer, where
        self.sequences = sequences
        self.inputs, self.after, self.prefetch = inputs, after, prefetch  # key -> (idx, arrays); key -> next key
        self.cursor = None  # the next key to put
        self.gathering = deque()  # (key, Batch, arrays): gathered or being gathered, not yet fed
        self.running = deque()    # (key, Batch): fed to DALI, outputs not yet taken
        self.taken = deque()      # Batch: outputs taken, the consumer not yet done with them
        self.closed = False

    @property
    def in_flight(self) -> int:
        return len(self.gathering) + len(self.running)

    def head(self):
        """The key of the oldest batch in flight, None when idle."""
        return self.running[0][0] if self.running else self.gathering[0][0] if self.gathering else None

    def tail(self):
        """The key of the newest batch in flight, None when idle."""
        return self.gathering[-1][0] if self.gathering else self.running[-1][0] if self.running else None

    def start(self, key) -> None:
        """An iteration begins at ``key``: what runs ahead for it is kept, anything else dropped."""
        if self.head() not in (None, key):
            self.drain()  # batches ahead for another position: set_epoch, load_state_dict
        self.cursor = self.after(self.tail()) if self.tail() else key

    def fill(self) -> None:
        """Keep ``prefetch`` batches running in DALI and one more gathering."""
        while self.in_flight <= self.prefetch:
            self.put(self.cursor, *self.inputs(*self.cursor))
            self.cursor = self.after(self.cursor)
        while self.gathering and len(self.running) < self.prefetch:
            self.schedule()

    def put(self, key, idx, arrays: dict) -> None:
        self.gathering.append((key, self.gatherer.submit(*self.where(key)), arrays))

    def schedule(self) -> None:
        key, batch, arrays = self.gathering.popleft()
        try:
            images = batch.wait()
            layout = "HWC"
            if self.sequences:
                k = _parts(len(images), self.sequences)
                images, layout = images.reshape(k, -1, *images.shape[1:]), "FHWC"
                arrays = {name: v.reshape(k, -1, *v.shape[1:]) for name, v in arrays.items()}
            # read in place (no_copy); marked page-locked when it is, so DALI's copy to the GPU is
            # the asynchronous one (a numpy array reads as pageable). JPEG: (B, W) padded payloads
            images = TensorListCPU(images, layout if self.gatherer.raw else None,
                                   is_pinned=self.gatherer.pinned)
            self.pipe.feed_input("images", images)
            for name, value in arrays.items():
                self.pipe.feed_input(name, value)
            self.pipe.schedule_run()
        except BaseException:
            # A half-fed batch leaves DALI's input queues uneven: this pipeline is done (the
            # loader builds a new one on its next iteration).
            self.gatherer.release(batch)
            self.close()
            raise
        self.running.append((key, batch))

    def get(self, stream=None):
        """Blocks until the oldest running batch is out of DALI. ``stream`` None: the outputs are
        complete (CPU) or synchronised with the host (GPU); a CUDA stream: they are ready in that
        stream's order, without a host sync. Then call ``done``."""
        key, batch = self.running.popleft()
        self.taken.append(batch)
        outputs = self.pipe.outputs() if stream is None else self.pipe.outputs(cuda_stream=stream)
        return key, outputs

    def done(self, event=None, keep=None) -> None:
        """The oldest taken batch: its buffer is free once ``event`` completes (None: now), and
        ``keep`` (its DALI outputs) is held until then."""
        self.gatherer.release(self.taken.popleft(), event, keep)

    def drain(self) -> None:
        while self.gathering:
            _, batch, _ = self.gathering.popleft()
            try:
                batch.wait()
            finally:
                self.gatherer.release(batch)
        while self.taken:
            self.done()  # outputs the consumer dropped (an error between get and done)
        while self.running:
            try:
                self.get()
            finally:
                self.done()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.drain()
        except (AttributeError, RuntimeError):
            # At interpreter exit DALI's own exit hook may have destroyed the pipeline first: the
            # batches in flight are dropped either way, which is all closing asks.
            self.gathering.clear()
            self.running.clear()
        finally:
            self.gatherer.close()
            self.pipe = None  # DALI joins its threads here, before the interpreter tears down


def _parts(n: int, most: int) -> int:
    """The most equal parts, at most ``most``, that ``n`` samples split into (1 when none)."""
    return next(k for k in range(min(most, n), 0, -1) if n % k == 0) if n else 1
