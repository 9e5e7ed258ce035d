"""The DALI loader: ``build_loader(path, split, batch_size=...)`` -> iterable of (images, labels).

    loader = build_loader("data/imagenet256", "train", batch_size=128, dp_rank=r, dp_size=n)
    for epoch in range(90):
        loader.set_epoch(epoch)
        for images, labels in loader:      # images (N, 3, crop, crop) on the device, labels int64
            ...
    state = loader.state_dict()            # {"epoch", "step"}: resume mid-epoch with load_state_dict

Samples are gathered from the memory-mapped shards by an external_source callback (only the pages
a batch touches are read; the split never sits in RAM); the graph in pipeline/augment.py runs on
the GPU when there is one (``device_id`` = the current CUDA device), else the same graph on the CPU
(``device_id=None``). Which samples a rank gets and every random decision come from
pipeline/sampler.py. Pass the data-parallel rank: both ranks of a model-parallel pair must get
identical batches, so never LOCAL_RANK.
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext

import numpy as np
import torch
from nvidia.dali import pipeline_def
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali.plugin.pytorch import feed_ndarray

from . import augment
from ..errors import UsageError
from .dataset import open_dataset
from .sampler import Sampler, decisions, lighting_offset, ten_crop_offsets

MEANS = ("pixel", "channel", "none")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class LoaderError(UsageError):
    """Arguments that cannot work, reported before any work starts."""


class Loader:
    def __init__(self, path, split, *, batch_size, crop=224, device="auto", dp_rank=0, dp_size=1,
                 seed=0, flip=True, lighting=0.1, lighting_form="code", mean="pixel",
                 dtype=torch.float32, channels_last=False, ten_crop=False, drop_last=None,
                 num_threads=None, prefetch=2):
        ds = open_dataset(path)  # FormatError (naming the file) for a damaged or foreign dataset
        if split not in ds:
            raise LoaderError(f"{path}: unknown split {split!r}; the dataset has {sorted(ds.splits)}")
        self.data, self.size, self.stats = ds[split], ds.size, ds.stats
        n = len(self.data)
        _check(batch_size=batch_size, crop=crop, size=ds.size, dp_rank=dp_rank, dp_size=dp_size, n=n,
               mean=mean, dtype=dtype, lighting=lighting, lighting_form=lighting_form,
               split=split, path=path)
        self.train = split == "train" and not ten_crop
        self.crop, self.flip, self.lighting, self.lighting_form = crop, flip, lighting, lighting_form
        self.mean, self.dtype, self.channels_last, self.ten_crop = mean, dtype, channels_last, ten_crop
        self.seed = seed
        self.device = _resolve_device(device)
        drop_last = self.train if drop_last is None else drop_last
        self.sampler = Sampler(n, batch_size, dp_rank, dp_size, seed, shuffle=self.train,
                               drop_last=drop_last)
        self.num_threads = num_threads or max(1, min(4, torch.get_num_threads()))
        self.prefetch = prefetch
        self.epoch, self.step = 0, 0
        self._plan_epoch = None

    # -- position ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.step = epoch, 0

    def state_dict(self) -> dict:
        """Where the next batch comes from: resume with load_state_dict on a new loader."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "global_batch": self.sampler.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["global_batch"] != self.sampler.global_batch:
            raise LoaderError(f"loader state is for seed {state['seed']} and global batch "
                              f"{state['global_batch']}, this loader has {self.seed} and "
                              f"{self.sampler.global_batch}: the sample order would differ")
        self.epoch, self.step = state["epoch"], state["step"]

    # -- what each step holds (also the tests' window into the random decisions) ----------------
    def plan(self, epoch: int):
        """(order, Decisions) of an epoch, cached for the current one."""
        if self._plan_epoch is None or self._plan_epoch[0] != epoch:
            d = decisions(len(self.data), self.seed, epoch, self.size, self.crop, self.flip,
                          self.lighting, random=self.train)
            self._plan_epoch = (epoch, self.sampler.order(epoch), d)
        return self._plan_epoch[1], self._plan_epoch[2]

    def indices(self, epoch: int, step: int) -> np.ndarray:
        return self.sampler.indices(self.plan(epoch)[0], step)

    def offsets(self, epoch: int, idx: np.ndarray) -> np.ndarray:
        """The lighting RGB offset (len(idx), 3) in pixel units of these samples."""
        d = self.plan(epoch)[1]
        return lighting_offset(d.alpha[idx], self.stats["eigval"], self.stats["eigvec"], self.lighting_form)

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self):
        epoch, start, steps = self.epoch, self.step, len(self)
        dali_steps = steps
        if steps and len(self.indices(epoch, steps - 1)) == 0:
            dali_steps -= 1  # this rank's share of the last, partial global batch is empty
        if start < dali_steps:
            pipe = self._pipeline(epoch, start, dali_steps)
            for step in range(start, dali_steps):
                outputs = pipe.run()
                images, labels = self._to_torch(pipe, outputs)
                self._advance(epoch, step, steps)
                yield images, labels
            del pipe
        for step in range(max(start, dali_steps), steps):
            self._advance(epoch, step, steps)
            yield self._empty()
        if steps == 0:
            self.epoch, self.step = epoch + 1, 0

    def _advance(self, epoch: int, step: int, steps: int) -> None:
        """Position after yielding ``step``; after the last one it is the next epoch's start, so a
        checkpoint taken there resumes with the next epoch."""
        self.epoch, self.step = (epoch + 1, 0) if step + 1 == steps else (epoch, step + 1)

    def _source(self, epoch: int, start: int, stop: int):
        """The external_source callback: gathers one batch and its decisions per call."""
        order, d = self.plan(epoch)
        shift = self.size - self.crop
        light = self.train and self.lighting > 0

        def callback(info):
            step = start + info.iteration
            if step >= stop:
                raise StopIteration
            idx = self.sampler.indices(order, step)
            shards = [self.data.locate(int(i)) for i in idx]
            if self.data.encoding == "raw":
                images = [s.payload[j] for s, j in shards]  # memmap views: DALI copies the pages
            else:
                images = [np.frombuffer(s.encoded(j), np.uint8) for s, j in shards]
            labels = [np.array(s.labels[j], np.int32) for s, j in shards]
            fx = (d.crop_x[idx] / shift if shift else np.zeros(len(idx))).astype(np.float32)
            fy = (d.crop_y[idx] / shift if shift else np.zeros(len(idx))).astype(np.float32)
            offset = self.offsets(epoch, idx) if light else np.zeros((len(idx), 3))
            base = self.stats["channel_mean"] if self.mean == "channel" else np.zeros(3)
            mean = (base - offset).astype(np.float32)  # CMN subtracts mean: + offset
            return (images, labels, list(fx), list(fy), list(d.flip[idx].astype(np.int32)), list(mean))

        return callback

    def _pipeline(self, epoch: int, start: int, stop: int):
        dev = "gpu" if self.device.type == "cuda" else "cpu"
        layout = "HWC" if self.channels_last and not self.ten_crop else "CHW"
        out_type = types.FLOAT16 if (self.dtype == torch.float16 and dev == "gpu") else types.FLOAT
        std = (self.stats["channel_std"] if self.mean == "channel" else np.ones(3)).astype(np.float32).tolist()
        mean_image = self.stats["mean_image"] if self.mean == "pixel" else None
        encoding, crop, size, ten = self.data.encoding, self.crop, self.size, self.ten_crop
        windows = [(x / (size - crop) if size > crop else 0.0, y / (size - crop) if size > crop else 0.0, m)
                   for x, y, m in ten_crop_offsets(size, crop)]

        @pipeline_def
        def graph():
            images, labels, fx, fy, mirror, mean = fn.external_source(
                source=self._source(epoch, start, stop), num_outputs=6, batch=True, batch_info=True,
                dtype=[types.UINT8, types.INT32, types.FLOAT, types.FLOAT, types.INT32, types.FLOAT],
                layout=["HWC" if encoding == "raw" else "", "", "", "", "", ""])
            if encoding == "jpeg":
                images = augment.decode(images, dev)
            elif dev == "gpu":
                images = images.gpu()
            const = None
            if mean_image is not None:
                const = types.Constant(mean_image, layout="HWC", device=dev)
            if ten:
                out = augment.ten_crop(images, crop, windows, mean, std, const, out_type, layout)
            else:
                out = augment.crop_normalize(images, crop, fx, fy, mirror, mean, std, const,
                                             out_type, layout)
            return out, labels

        device_id = self.device.index if dev == "gpu" else None
        pipe = graph(batch_size=self.sampler.batch_size, num_threads=self.num_threads,
                     device_id=device_id, prefetch_queue_depth=self.prefetch,
                     seed=self.seed)
        with warnings.catch_warnings():
            # ten-crop uses fixed windows, so the callback's per-sample crop outputs go unused
            warnings.filterwarnings("ignore", message=".*are not used.*")
            pipe.build()
        return pipe

    def _to_torch(self, pipe, outputs):
        images, labels = (o.as_tensor() for o in outputs)
        if pipe.exec_dynamic:
            # DALI 2.x's dynamic executor gives each output its own memory: hand it to torch
            # without a copy, as DALI's DALIGenericIterator does. The copy into a fresh tensor
            # was 70% of a CPU batch's time (BENCHMARKS.md, "Loader").
            device = torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()
            with device:
                out = torch.from_dlpack(images)
        else:
            stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
            dali_dtype = torch.float16 if images.dtype == types.FLOAT16 else torch.float32
            out = torch.empty(images.shape(), dtype=dali_dtype, device=self.device)
            feed_ndarray(images, out, cuda_stream=stream)
        if self.channels_last and not self.ten_crop:
            out = out.permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW: channels_last for free
        if out.dtype != self.dtype:
            out = out.to(self.dtype)  # bf16 (and fp16 on the CPU, where DALI's fp16 is 3x slower)
        labels = torch.from_numpy(np.array(labels)).to(self.device, torch.int64, non_blocking=True)
        return out, labels

    def _empty(self):
        shape = (0, 10, 3, self.crop, self.crop) if self.ten_crop else (0, 3, self.crop, self.crop)
        images = torch.empty(shape, dtype=self.dtype, device=self.device)
        if self.channels_last and not self.ten_crop:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, torch.empty(0, dtype=torch.int64, device=self.device)


def _resolve_device(device) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LoaderError("device='cuda' but CUDA is not available (use device='cpu' or 'auto')")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise LoaderError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    return device


def _check(*, batch_size, crop, size, dp_rank, dp_size, n, mean, dtype, lighting, lighting_form,
           split, path):
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


def build_loader(path, split, **kwargs) -> Loader:
    """See the module docstring; every argument is checked before any work starts."""
    return Loader(path, split, **kwargs)
