"""The DALI loader: ``build_loader(path, split, batch_size=...)`` -> iterable of (images, labels).

    loader = build_loader("data/imagenet256", "train", batch_size=128, dp_rank=r, dp_size=n)
    for epoch in range(90):
        loader.set_epoch(epoch)
        for images, labels in loader:      # images (N, 3, crop, crop) on the device, labels int64
            ...
    state = loader.state_dict()            # {"epoch", "step"}: resume mid-epoch with load_state_dict
    loader.close()                         # optional: also at garbage collection and at exit

``graph=`` runs another DALI graph over the same feed (raw datasets only): a ``@pipeline_def``
taking ``device`` ("cpu" | "gpu") whose graph reads the two external sources the loader feeds,
``graphs.images_input(device, "raw")`` and ``graphs.labels_input(device)``; the loader yields its
two outputs as torch tensors, unconverted (no crop, cast or layout change; the augmentation
arguments are unused). tools/bench/graphs.py holds the benchmark's.

``path`` may be a bucket's URL (``s3://bucket/prefix``): shards are then fetched ahead of the
order into ``cache_dir`` (at most ``cache_limit`` bytes; pipeline/store.py, prefetch.py), and
``data_order="block"`` takes the shards in blocks of ``block_shards`` that fit such a cache
(sampler.py).

One DALI pipeline (pipeline/load/graphs.py) serves the loader for its whole life; an epoch only
changes what is fed. Each batch's samples are gathered by worker threads from the memory-mapped
shards into a ring of reusable (pinned on CUDA) buffers that DALI reads in place
(pipeline/load/gather.py, feed.py), with crop positions, flips and lighting shifts as
whole-batch arrays: where each sample is, what is fed with it and its label are put in the
epoch's order once an epoch (the next epoch on a worker thread), so a step hands over slices,
whatever the batch size; labels do not pass through DALI (a step's are a slice); only the
pages a batch touches are read, the split never sits in RAM. Where nothing but the crop window
and flip differs between samples (``precrop``), the gatherer copies just the windows, mirrored,
and the graph only normalises them; JPEG payloads decode only their window. The graph runs on
the GPU when there is one (``device_id`` = the current CUDA device), else the same graph on the
CPU (``device_id=None``). Which samples a rank gets and every
random decision come from pipeline/load/sampler.py. Pass the data-parallel rank: both ranks of a
model-parallel pair must get identical batches, so never LOCAL_RANK.
"""
from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..device import DeviceError, check_driver, resolve_device
from ..errors import UsageError
from ..store import human
from . import graphs
from .dataset import open_dataset
from .feed import Feed
from .prefetch import Prefetcher, needed_bytes
from .gather import Gatherer
from .augment import lighting_shift
from .sampler import Sampler, decisions

MEANS = ("pixel", "channel", "none")
ORDERS = ("global", "block")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class LoaderError(UsageError):
    """Arguments that cannot work, reported before any work starts."""


class Loader:
    def __init__(self, path, split, *, batch_size, crop=224, device="auto", dp_rank=0, dp_size=1,
                 seed=0, flip=True, lighting=0.1, lighting_form="code", mean="pixel",
                 dtype=torch.float32, channels_last=False, ten_crop=False, drop_last=None,
                 num_threads=None, prefetch=2, graph=None, data_order="global", block_shards=0,
                 cache_dir=None, cache_limit=None):
        if data_order not in ORDERS:
            raise LoaderError(f"{path} [{split}]: data_order must be one of {ORDERS}, got {data_order!r}")
        # FormatError (naming the file) for a damaged or foreign dataset; StoreError for a store
        ds = open_dataset(path, cache_dir=cache_dir, cache_limit=cache_limit)
        path = ds.root  # messages name the directory or the URL (also when given an open Dataset)
        if split not in ds:
            raise LoaderError(f"{path}: unknown split {split!r}; the dataset has {sorted(ds.splits)}")
        self.data, self.size, self.stats = ds[split], ds.size, ds.stats
        n = len(self.data)
        _check(batch_size=batch_size, crop=crop, size=ds.size, dp_rank=dp_rank, dp_size=dp_size, n=n,
               mean=mean, dtype=dtype, lighting=lighting, lighting_form=lighting_form,
               prefetch=prefetch, split=split, path=path)
        if graph is not None and ds.encoding != "raw":
            raise LoaderError(f"{path} [{split}]: graph= (another graph over the feed) needs a raw dataset")
        self.train = split == "train" and not ten_crop
        # Where each sample's crop window and flip are all that differ between samples (raw
        # payloads, one window, no mean image, no lighting), the gatherer copies the windows,
        # mirrored, and the graph normalises the batch in a few sequences with constants
        # (gather.py, graphs.precropped_pipeline). A mean image is subtracted at full size before
        # the graph's crop (augment.py), lighting is a per-sample input, ten-crop reads ten
        # windows: those crop in the graph. JPEG payloads are decoded in the graph, each only at
        # its window (augment.decode).
        self.precrop = (graph is None and ds.encoding == "raw" and not ten_crop and mean != "pixel"
                        and not (self.train and lighting > 0))
        self.crop, self.flip, self.lighting, self.lighting_form = crop, flip, lighting, lighting_form
        self.mean, self.dtype, self.channels_last, self.ten_crop = mean, dtype, channels_last, ten_crop
        self.seed, self.graph = seed, graph
        self.augment = graph is None  # the augmentation graphs of graphs.py, and their conversions
        try:
            self.device = resolve_device(device)
            if self.device.type == "cuda":
                check_driver()  # before any DALI GPU operator is built
        except DeviceError as e:
            raise LoaderError(str(e)) from None
        drop_last = self.train if drop_last is None else drop_last
        self.data_order = data_order
        self.block_shards = _block_shards(self.data, data_order, block_shards, path, split) \
            if self.train else 0
        self.sampler = Sampler(n, batch_size, dp_rank, dp_size, seed, shuffle=self.train,
                               drop_last=drop_last, shard_starts=self.data.starts,
                               block_shards=self.block_shards)
        self.num_threads = num_threads or default_threads()[0]
        self.prefetch = prefetch  # batches scheduled ahead in DALI; prefetch + 1 buffers in the ring
        self.epoch, self.step = 0, 0  # the position: where the next batch comes from
        self.last = None  # (epoch, step) of the batch yielded last
        self._plans = {}  # epoch -> (order, Decisions)
        self._epoch_arrays = {}  # epoch -> (its Decisions, the _Epoch arrays made from them)
        self._ahead = None  # (epoch, Future of (order, Decisions, _Epoch)): the next one, planned aside
        self._planner = None  # one worker thread for that, made on first use
        self._steps_with_data = None
        self._feed = None  # built on first use, then kept: one pipeline for the loader's life
        self._prefetch = None
        if self.data.remote:  # shards fetched ahead of the order into the node's cache
            self._prefetch = self._prefetcher(path, split)

    # -- position ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sampler)

    def epoch_done(self, epoch: int) -> bool:
        """Whether every batch of ``epoch`` has been yielded: the position has moved past it (a
        loop that stopped early leaves it inside)."""
        return self.epoch > epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.step = epoch, 0

    def state_dict(self) -> dict:
        """Where the next batch comes from: resume with load_state_dict on a new loader."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "global_batch": self.sampler.global_batch, "data_order": self.data_order,
                "block_shards": self.block_shards}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["global_batch"] != self.sampler.global_batch:
            raise LoaderError(f"loader state is for seed {state['seed']} and global batch "
                              f"{state['global_batch']}, this loader has {self.seed} and "
                              f"{self.sampler.global_batch}: the sample order would differ")
        order = (state.get("data_order", "global"), state.get("block_shards", 0))
        if order != (self.data_order, self.block_shards):
            raise LoaderError(f"loader state is for data_order={order[0]} with {order[1]} shards a "
                              f"block, this loader has data_order={self.data_order} with "
                              f"{self.block_shards}: the sample order would differ (pass the "
                              f"run's data_order and block_shards)")
        self.epoch, self.step = state["epoch"], state["step"]

    # -- what each step holds (also the tests' window into the random decisions) ----------------
    def plan(self, epoch: int):
        """(order, Decisions) of an epoch, cached for two epochs: the one asked for and the
        highest-numbered one cached before it (so the current epoch's stays while the next one's
        is taken, which happens while DALI still works on this epoch's last batches). A training
        loader plans the next epoch on a worker thread from the middle of this one (``inputs``),
        so the O(N) work (for ImageNet's 1.28M samples 0.2-1 s with the epoch's arrays) is
        not the training thread's at the epoch boundary; an epoch asked for out of turn (a resume,
        a test) is planned here."""
        if epoch not in self._plans:
            ahead = self._take_ahead(epoch)
            if ahead is None:
                order, d = self.sampler.order(epoch), self._decisions(epoch)
            else:
                order, d, arrays = ahead
            self._plans = {k: v for k, v in self._plans.items() if k == max(self._plans)} \
                if self._plans else {}
            self._plans[epoch] = (order, d)
            if ahead is not None:
                self._keep_arrays(epoch, d, arrays)
        return self._plans[epoch]

    def _decisions(self, epoch: int):
        return decisions(len(self.data), self.seed, epoch, self.size, self.crop, self.flip,
                         self.lighting, random=self.train)

    def _arrays(self, epoch: int) -> "_Epoch":
        """What every step of ``epoch`` feeds, put in the epoch's order once, when it is planned
        (O(N), ~40 bytes a sample, two epochs kept; for 1.28M samples measured here: locating
        them 70 ms, putting the arrays in order ~130 ms, the lighting shifts 440 ms), so that a
        step only takes slices of these arrays: no per-sample work on the training thread,
        whatever the batch size."""
        order, d = self.plan(epoch)
        if self._epoch_arrays.get(epoch, (None,))[0] is not d:
            self._keep_arrays(epoch, d, self._ordered(order, d))
        return self._epoch_arrays[epoch][1]

    def _keep_arrays(self, epoch: int, d, arrays: "_Epoch") -> None:
        self._epoch_arrays = {k: v for k, v in self._epoch_arrays.items() if k in self._plans}
        self._epoch_arrays[epoch] = (d, arrays)

    def _plan_ahead(self, epoch: int) -> None:
        """Start planning ``epoch`` (order, decisions, arrays) on the planner thread. Epochs
        before the one planning it and before the consumer's are dropped now: the feed has put
        all their steps and their labels were yielded (a restart there plans them again), so at
        most two epochs' arrays are held."""
        if epoch in self._plans or (self._ahead is not None and self._ahead[0] == epoch):
            return
        if self._planner is None:
            self._planner = ThreadPoolExecutor(1, thread_name_prefix="plan")
        self._plans = {k: v for k, v in self._plans.items() if k >= min(epoch - 1, self.epoch)}
        self._epoch_arrays = {k: v for k, v in self._epoch_arrays.items() if k in self._plans}
        self._ahead = (epoch, self._planner.submit(self._plan_all, epoch))

    def _plan_all(self, epoch: int):
        """On the planner thread: pure functions of (seed, epoch) and the dataset, nothing shared
        is written (numpy releases the GIL for the bulk of it)."""
        order, d = self.sampler.order(epoch), self._decisions(epoch)
        return order, d, self._ordered(order, d)

    def _take_ahead(self, epoch: int):
        """(order, Decisions, _Epoch) of ``epoch`` if the planner made it (waiting if it is still
        at it), else None; a plan made for another epoch is dropped."""
        if self._ahead is None:
            return None
        planned, future = self._ahead
        if planned != epoch:
            return None
        self._ahead = None
        return future.result()  # a planner's error is raised here, on the training thread

    def _ordered(self, order: np.ndarray, d) -> "_Epoch":
        shard, row = self.data.locate_many(order)
        ordered = self.data.labels[order]
        labels = torch.from_numpy(ordered.astype(np.int64))
        if self.device.type == "cuda":  # a step's slice crosses with an asynchronous copy
            labels = labels.pin_memory()
        # labels pass through DALI only for another graph (graph=); the augmentation graphs
        # output images alone, and a step's labels are a slice of ``labels`` (_labels)
        fed = {} if self.augment else {"labels": ordered.astype(np.int32)}
        window = None
        if self.precrop:  # the gatherer cuts each window; the graph takes no per-sample input
            window = (d.crop_x[order].astype(np.int32), d.crop_y[order].astype(np.int32), d.flip[order])
        elif self.train and self.augment:
            room = max(self.size - self.crop, 1)
            fed["crop_x"] = (d.crop_x[order] / room).astype(np.float32)  # crop_mirror_normalize's unit
            fed["crop_y"] = (d.crop_y[order] / room).astype(np.float32)
            fed["flip"] = d.flip[order].astype(np.int32)
        if self.train and self.augment and self.lighting > 0:
            light = lighting_shift(d.alpha[order], self.stats["eigval"], self.stats["eigvec"],
                                   self.lighting_form)
            # crop_mirror_normalize subtracts its mean: base mean minus the shift adds the shift
            fed["shift"] = (self._base_mean() - light).astype(np.float32)
        return _Epoch(shard.astype(np.int32), row.astype(np.int32), window, fed, labels)

    def indices(self, epoch: int, step: int) -> np.ndarray:
        return self.sampler.indices(self.plan(epoch)[0], step)

    def inputs(self, epoch: int, step: int) -> tuple[np.ndarray, dict]:
        """(sample indices, the named whole-batch arrays fed with them) of one step: slices of the
        epoch's arrays (dense, as DALI takes them), whatever the batch size."""
        a, b = self.sampler.bounds(step)
        order, e = self.plan(epoch)[0], self._arrays(epoch)
        if self.train and step >= self._dali_steps() // 2:  # also after a resume past the middle
            self._plan_ahead(epoch + 1)  # done long before the feed runs into it (once: a no-op after)
        if self._prefetch is not None:
            self._prefetch.at(epoch, step, order)
        return order[a:b], {name: v[a:b] for name, v in e.fed.items()}

    def where(self, key) -> tuple[np.ndarray, np.ndarray, tuple | None]:
        """(shard, row, window) of the samples at ``key`` = (epoch, step), slices as ``inputs``:
        where the gatherer reads each sample, and its crop window (x, y, flip) when the gatherer
        crops (``precrop``), else None."""
        a, b = self.sampler.bounds(key[1])
        e = self._arrays(key[0])
        window = tuple(v[a:b] for v in e.window) if e.window is not None else None
        return e.shard[a:b], e.row[a:b], window

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self):
        epoch, start, steps = self.epoch, self.step, len(self)
        dali_steps = self._dali_steps()
        if start < dali_steps:
            feed = self._get_feed()
            feed.start((epoch, start))  # drops batches run ahead for another position
            completed = False
            try:
                for step in range(start, dali_steps):
                    feed.fill()
                    key, outputs = feed.get(self._stream())
                    if key != (epoch, step):
                        raise RuntimeError(f"loader: DALI returned batch {key}, expected {(epoch, step)}")
                    images, labels, event = self._to_torch(outputs, key)
                    feed.done(event, outputs)  # the batch's buffer is free once DALI has read it
                    # Gathered and run while this batch is used; at the epoch's end this goes on
                    # with the next epoch's first batches, so its start waits for none.
                    feed.fill()
                    batch = self._finish(images, labels)
                    self._advance(epoch, step, steps)
                    yield batch
                completed = True
            finally:
                if not completed and not feed.closed:
                    feed.drain()  # abandoned mid-epoch: nothing of it stays in DALI's queues
        for step in range(max(start, dali_steps), steps):
            self._advance(epoch, step, steps)
            yield self._empty()
        if steps == 0:
            self.epoch, self.step = epoch + 1, 0

    def _dali_steps(self) -> int:
        """Steps with a non-empty batch on this rank (the same in every epoch), computed once."""
        if self._steps_with_data is None:
            steps = len(self)
            last = self.sampler.indices(np.arange(self.sampler.n), steps - 1) if steps else []
            # this rank's share of the last, partial global batch may be empty
            self._steps_with_data = steps - 1 if steps and len(last) == 0 else steps
        return self._steps_with_data

    def _after(self, key):
        """The (epoch, step) after ``key`` among the steps DALI runs: the feed's run-ahead order."""
        epoch, step = key
        return (epoch, step + 1) if step + 1 < self._dali_steps() else (epoch + 1, 0)

    def close(self) -> None:
        """Stop the gather threads and destroy the DALI pipeline (idempotent; also done when the
        loader is garbage collected and at interpreter exit)."""
        if self._feed is not None:
            self._finalizer()
        if self._planner is not None:
            self._planner.shutdown(wait=True, cancel_futures=True)
            self._planner, self._ahead = None, None
        if self._prefetch is not None:
            self._prefetch.close()  # its shards are no longer protected from eviction

    def _advance(self, epoch: int, step: int, steps: int) -> None:
        """Position after yielding ``step``; after the last one it is the next epoch's start, so a
        checkpoint taken there resumes with the next epoch."""
        self.last = (epoch, step)
        self.epoch, self.step = (epoch + 1, 0) if step + 1 == steps else (epoch, step + 1)

    def _base_mean(self) -> np.ndarray:
        return self.stats["channel_mean"] if self.mean == "channel" else np.zeros(3)

    def prepare(self) -> "Loader":
        """Build the DALI graph and start the gather threads now (else at the first batch): a
        trainer builds every loader before its first step, before training grows its memory."""
        self._get_feed()
        return self

    def _get_feed(self) -> Feed:
        if self._feed is None or self._feed.closed:
            pipe = self._pipeline()
            cuda = self.device.type == "cuda"
            # prefetch batches in DALI, one gathering, and on CUDA one more: the batch whose
            # copy torch's stream has not yet made (its slot comes back when its event completes)
            gatherer = Gatherer(self.data, self.sampler.batch_size, self.num_threads,
                                slots=self.prefetch + 1 + cuda, pinned=cuda,
                                crop=self.crop if self.precrop else None)
            self._feed = Feed(pipe, gatherer, inputs=self.inputs, where=self.where, after=self._after,
                              prefetch=self.prefetch, sequences=self.num_threads if self.precrop else 0)
            # The finalizer holds the feed, never the loader: runs at collection or at exit.
            self._finalizer = weakref.finalize(self, self._feed.close)
        return self._feed

    def _pipeline(self):
        return graphs.build(self)

    def _prefetcher(self, path, split) -> Prefetcher:
        """A remote split's prefetcher, once the cache limit is known to hold the batches in
        flight (refused here, before any step, if it cannot) and the disk the cache."""
        cuda = self.device.type == "cuda"
        window = self.prefetch + 2 + cuda  # global batches that may be in flight at once
        cache, limit = self.data.cache, self.data.cache.limit
        if limit is not None:
            need, at = needed_bytes(self.data, self.plan(self.epoch)[0], self.sampler.global_batch, window)
            if need > limit:
                raise LoaderError(
                    f"{path} [{split}]: cache_limit {human(limit)} cannot hold the shards of "
                    f"the {window} batches in flight ({human(need)} from step {at} in "
                    f"data_order={self.data_order}): raise cache_limit"
                    + ("" if self.data_order == "block" or not self.train else " or use data_order=block"))
        total = int(sum(e["bytes"] for e in self.data.entries))
        cache.check_space(min(total, limit) if limit else total, f"[{split}]")
        return Prefetcher(self.data, self.sampler.global_batch, behind=window)

    def cache_stats(self) -> dict | None:
        """Bytes fetched and refetched from the store, seconds waited for shards (remote only)."""
        return self.data.cache.stats() if self.data.remote else None

    def _stream(self):
        """The stream DALI's outputs are bound to: torch's current one on CUDA (no host sync),
        None on the CPU (outputs complete when they are returned)."""
        return torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

    def _to_torch(self, outputs, key):
        """(images, labels, event): DALI's outputs as torch tensors. On the CPU they are DALI's
        own memory (DLPack, no copy; each output has its own memory under the dynamic executor,
        kept alive by the tensor), and event is None. On CUDA, torch's stream waits for DALI's
        outputs (an event, not a host sync), then one kernel copies the images into torch's own
        memory, cast to the run's dtype on the way (bf16 and fp16 pay nothing extra); ``event``
        marks when that copy (and, with graph=, the labels' int64 cast) has read DALI's memory:
        until then the loader keeps DALI's outputs (and the input ring slot) alive, so DALI can
        reuse neither while torch's queued kernels still read them. The labels of the
        augmentation graphs are the step's slice of the epoch's (``_labels``), not DALI's."""
        cuda = self.device.type == "cuda"
        with torch.cuda.device(self.device) if cuda else nullcontext():
            out = torch.from_dlpack(outputs[0].as_tensor())
            # graph=: DALI's labels, cast on the device (a kernel, no host sync)
            labels = self._labels(key) if self.augment else \
                torch.from_dlpack(outputs[1].as_tensor()).to(torch.int64)
        if self.precrop:  # (K, B / K, ...) sequences of windows: one batch, no copy
            out = out.flatten(0, 1)
        if self.augment and self.channels_last:
            # NHWC memory viewed as NCHW: channels_last for free (ten-crop: (N, 10, H, W, C) as
            # (N, 10, C, H, W), whose flatten(0, 1) is a channels_last batch, also for free)
            out = out.permute(0, 1, 4, 2, 3) if self.ten_crop else out.permute(0, 3, 1, 2)
        if not cuda:
            return out, labels, None
        # .to keeps the strides (channels_last stays channels_last); copy=True even without a cast
        out = out.to(self.dtype if self.augment else out.dtype, copy=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return out, labels, event

    def _labels(self, key) -> torch.Tensor:
        """The int64 labels of step ``key`` = (epoch, step), the consumer's own: on the CPU a copy
        of the epoch's slice, on CUDA an asynchronous copy from its page-locked memory (torch's
        host allocator keeps that memory until the copy has run)."""
        a, b = self.sampler.bounds(key[1])
        labels = self._arrays(key[0]).labels[a:b]
        if self.device.type == "cuda":
            return labels.to(self.device, non_blocking=True)
        return labels.clone()

    def _finish(self, out, labels):
        if self.augment and out.dtype != self.dtype:
            out = out.to(self.dtype)  # the CPU: bf16 / fp16 (DALI emits no bf16), after the next
            # batch was handed to DALI so that it works meanwhile
        return out, labels

    def _empty(self):
        shape = (0, 10, self.crop, self.crop, 3) if self.ten_crop else (0, self.crop, self.crop, 3)
        images = torch.empty(shape, dtype=self.dtype, device=self.device)
        if self.channels_last:
            return images.movedim(-1, -3), torch.empty(0, dtype=torch.int64, device=self.device)
        images = torch.empty(shape[:-3] + (3, self.crop, self.crop), dtype=self.dtype, device=self.device)
        return images, torch.empty(0, dtype=torch.int64, device=self.device)


@dataclass(frozen=True)
class _Epoch:
    """An epoch's per-sample arrays in its order (a step's are the slice ``sampler.bounds``)."""
    shard: np.ndarray       # int32: which shard holds each sample
    row: np.ndarray         # int32: its row in that shard
    window: tuple | None    # (x int32, y int32, flip bool) where the gatherer crops, else None
    fed: dict               # name -> the array fed to DALI under that name (crop_x, ...)
    labels: torch.Tensor    # int64 (page-locked on CUDA): a step's labels are its slice


def _block_shards(split, data_order: str, block_shards, path, name) -> int:
    """Shards a block in block order: given, or half of what the cache limit holds (so the next
    block can be fetched while this one is read); 0 in global order."""
    if data_order == "global":
        return 0
    if not isinstance(block_shards, int) or block_shards < 0:
        raise LoaderError(f"{path} [{name}]: block_shards must be an integer >= 0 (0: from "
                          f"cache_limit), got {block_shards!r}")
    if block_shards:
        return block_shards
    limit = split.cache.limit if split.remote else None
    if limit is None:
        raise LoaderError(f"{path} [{name}]: data_order=block needs block_shards, or a remote "
                          f"dataset with a cache_limit to size its blocks")
    largest = max(e["bytes"] for e in split.entries)
    return max(1, int(limit // (2 * largest)))


def _check(*, batch_size, crop, size, dp_rank, dp_size, n, mean, dtype, lighting, lighting_form,
           prefetch, split, path):
    def fail(msg):
        raise LoaderError(f"{path} [{split}]: {msg}")

    if not isinstance(batch_size, int) or batch_size < 1:
        fail(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(crop, int) or not 1 <= crop <= size:
        fail(f"crop must be an integer in 1..{size} (the stored size), got {crop!r}")
    if not isinstance(dp_size, int) or dp_size < 1:
        fail(f"dp_size must be a positive integer, got {dp_size!r}")
    if not isinstance(dp_rank, int) or not 0 <= dp_rank < dp_size:
        fail(f"dp_rank must be in 0..{dp_size - 1} (dp_size={dp_size}), got {dp_rank!r}")
    if n < dp_size:
        fail(f"{n} samples cannot be shared by {dp_size} data-parallel ranks")
    if mean not in MEANS:
        fail(f"mean must be one of {MEANS}, got {mean!r}")
    if dtype not in DTYPES:
        fail(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if not lighting >= 0:
        fail(f"lighting (the std of alpha) must be >= 0, got {lighting!r}")
    if lighting_form not in ("code", "paper"):
        fail(f"lighting_form must be 'code' or 'paper', got {lighting_form!r}")
    if not isinstance(prefetch, int) or prefetch < 1:
        fail(f"prefetch (batches scheduled ahead) must be a positive integer, got {prefetch!r}")


MAX_THREADS = 8  # per process by default: a large host does not get a DALI thread per core per rank


def default_threads() -> tuple[int, str]:
    """(threads, why): the loader's threads per process when none are asked for: the CPUs this
    process may run on (its affinity, which containers and ``taskset`` narrow) shared among the
    node's local ranks (torchrun's LOCAL_WORLD_SIZE), at most MAX_THREADS. Not torch's thread
    count: torchrun sets OMP_NUM_THREADS=1 with more than one process per node, which would leave
    the loader one thread and put the batch gather on the training thread."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    n = max(1, min(MAX_THREADS, cpus // local))
    return n, f"{cpus} CPUs in this process's affinity / {local} local rank{'s' * (local > 1)}, at most {MAX_THREADS}"


def build_loader(path, split, **kwargs) -> Loader:
    """See the module docstring; every argument is checked before any work starts."""
    return Loader(path, split, **kwargs)
