"""The DALI pipelines: thin ``@pipeline_def`` wiring of named whole-batch inputs to augment.py.

Every input is an ``external_source`` fed by the loader with ``feed_input`` (one dense array
per batch, never a per-sample tuple):

    images    uint8 (B, S, S, 3) raw (read in place: no_copy); where the gatherer cut the
              windows (K, B / K, crop, crop, 3), K sequences (precropped_pipeline); JPEG: (B, W),
              each sample's file then zeros (gather.py)
    labels    int32 (B,): only for another graph (Loader's graph=); the augmentation graphs
              output images alone, the loader slices each step's labels from the epoch's
    crop_x/y  float32 (B,): crop positions as fractions of (S - crop), crop_mirror_normalize's unit
    flip      int32 (B,)
    shift     float32 (B, 3): per-channel mean minus the PCA lighting shift, pixel units (with
              lighting; without, the mean is a constant)

``device`` is "cpu" or "gpu": the same graph either way, the inputs moved to the GPU first.
Output: images (B, 3, crop, crop) float (CHW layout; HWC for channels_last; ten-crop
(B, 10, ...) of either) on ``device``. One pipeline serves a loader for its whole life. ``images_input`` and
``labels_input`` are the feed's contract, also for another graph (Loader's ``graph=``).
"""
from __future__ import annotations

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import torch
from nvidia.dali import pipeline_def

from . import augment
from .augment import ten_crop_windows


def images_input(device: str, encoding: str, window=None, layout: str = "HWC"):
    """The fed ``images`` (raw: read in place; JPEG: decoded), on ``device``: the loader's contract.
    ``window`` = (crop, crop_x, crop_y): JPEG payloads decode that window only. ``layout``: raw
    images as fed ("FHWC": sequences of windows the gatherer cut)."""
    if encoding == "raw":
        images = fn.external_source(name="images", dtype=types.UINT8, layout=layout, no_copy=True)
        return images.gpu() if device == "gpu" else images
    encoded = fn.external_source(name="images", dtype=types.UINT8, no_copy=True)
    return augment.decode(encoded, device, window)


def labels_input(device: str):
    """The fed int32 ``labels`` on ``device``."""
    labels = fn.external_source(name="labels", dtype=types.INT32)
    return labels.gpu() if device == "gpu" else labels


def _mean_image(mean_image, device: str):
    return None if mean_image is None else types.Constant(mean_image, layout="HWC", device=device)


def _one_window(device, encoding, crop, crop_x, crop_y, flip, mean, std, mean_image, out_type,
                layout):
    """One crop window per sample. JPEG without a mean image decodes only the window; with one,
    the whole image (cutting the mean image at each window as well measured 12-16 % slower than
    decoding it all: 2 runs, 256 px, crop 224, 2 threads), as raw payloads are cut in the graph."""
    if encoding == "jpeg" and mean_image is None:
        images = images_input(device, encoding, (crop, crop_x, crop_y))
        return augment.normalize(images, mean, std, out_type, layout, flip)
    return augment.crop_normalize(images_input(device, encoding), crop, crop_x, crop_y, flip, mean,
                                  std, _mean_image(mean_image, device), out_type, layout)


@pipeline_def
def train_pipeline(*, device, encoding, crop, mean, std, mean_image, out_type, layout):
    """``mean``: a constant, or None for the fed per-sample ``shift`` (lighting)."""
    if mean is None:
        mean = fn.external_source(name="shift", dtype=types.FLOAT)
    crop_x = fn.external_source(name="crop_x", dtype=types.FLOAT)
    crop_y = fn.external_source(name="crop_y", dtype=types.FLOAT)
    flip = fn.external_source(name="flip", dtype=types.INT32)
    return _one_window(device, encoding, crop, crop_x, crop_y, flip, mean, std, mean_image, out_type,
                       layout)


@pipeline_def
def val_pipeline(*, device, encoding, crop, window, mean, std, mean_image, out_type, layout):
    """``window``: the fixed (crop_x, crop_y) fractions of the centre crop; ``mean`` a constant."""
    return _one_window(device, encoding, crop, window[0], window[1], 0, mean, std, mean_image,
                       out_type, layout)


@pipeline_def
def precropped_pipeline(*, device, mean, std, out_type, layout):
    """Train or val where the gatherer cut the windows (loader.precrop): the batch arrives as a
    few sequences of windows, ``(K, B / K, crop, crop, 3)`` FHWC, and only
    the normalisation with constant ``mean``/``std`` is left, one operator call per sequence
    instead of per sample (measured on 2 threads, batch 256: 391 against 883 us at 28 px, 16.2
    against 20.0 ms at 224 px, K = 2). Outputs ``(K, B / K, ...)``: the loader flattens them."""
    return augment.normalize(images_input(device, "raw", layout="FHWC"), mean, std, out_type,
                             "F" + layout)


@pipeline_def
def ten_crop_pipeline(*, device, encoding, crop, windows, mean, std, mean_image, out_type, layout):
    return augment.ten_crop(images_input(device, encoding), crop, windows, mean, std,
                            _mean_image(mean_image, device), out_type, layout)


def build(loader):
    """The one graph a loader runs (built): its own ``graph`` if it has one, else train, val or
    ten-crop with the loader's crop, mean, layout and output dtype, on its device."""
    dev = "gpu" if loader.device.type == "cuda" else "cpu"
    kw = dict(batch_size=loader.sampler.batch_size, num_threads=loader.num_threads,
              device_id=loader.device.index if dev == "gpu" else None, prefetch_queue_depth=1,
              exec_dynamic=True, device=dev)  # no seed: every random decision is fed
    if loader.graph is not None:
        pipe = loader.graph(**kw)
        pipe.build()
        return pipe
    size, crop, stats = loader.size, loader.crop, loader.stats
    # fp16 straight from DALI's last op; bf16 (DALI has none) is cast by torch
    out_type = types.FLOAT16 if loader.dtype == torch.float16 else types.FLOAT
    std = (stats["channel_std"] if loader.mean == "channel" else np.ones(3)).astype(np.float32).tolist()
    mean_image = stats["mean_image"] if loader.mean == "pixel" else None
    common = dict(kw, encoding=loader.data.encoding, crop=crop, std=std, mean_image=mean_image,
                  out_type=out_type, layout="HWC" if loader.channels_last else "CHW")
    base = stats["channel_mean"] if loader.mean == "channel" else np.zeros(3)
    mean = base.astype(np.float32).tolist()
    room = size - crop
    if loader.ten_crop:
        windows = [(x / room if room else 0.0, y / room if room else 0.0, int(m))
                   for x, y, m in ten_crop_windows(size, crop)]
        pipe = ten_crop_pipeline(windows=windows, mean=mean, **common)
    elif loader.precrop:
        pipe = precropped_pipeline(mean=mean, std=std, out_type=out_type, layout=common["layout"], **kw)
    elif loader.train:
        pipe = train_pipeline(mean=mean if loader.lighting == 0 else None, **common)
    else:
        c = (room // 2) / room if room else 0.0
        pipe = val_pipeline(window=(c, c), mean=mean, **common)
    pipe.build()
    return pipe
