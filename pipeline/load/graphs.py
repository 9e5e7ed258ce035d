"""The DALI pipelines: thin ``@pipeline_def`` wiring of named whole-batch inputs to augment.py.

Every input is an ``external_source`` fed by the loader with ``feed_input`` (one dense array
per batch, never a per-sample tuple):

    images    uint8 (B, S, S, 3) raw (read in place: no_copy), or B JPEG byte arrays
    labels    int32 (B,)
    crop_x/y  float32 (B,): crop positions as fractions of (S - crop), crop_mirror_normalize's unit
    mirror    int32 (B,)
    shift     float32 (B, 3): per-channel mean minus the PCA lighting shift, pixel units

``device`` is "cpu" or "gpu": the same graph either way, the inputs moved to the GPU first.
Outputs: images (B, 3, crop, crop) float (CHW layout; HWC for channels_last; ten-crop
(B, 10, ...) of either) and labels int32,
both on ``device``. One pipeline serves a loader for its whole life. ``images_input`` and
``labels_input`` are the feed's contract, also for another graph (Loader's ``graph=``).
"""
from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from . import augment


def images_input(device: str, encoding: str):
    """The fed ``images`` (raw: read in place; JPEG: decoded), on ``device``: the loader's contract."""
    if encoding == "raw":
        images = fn.external_source(name="images", dtype=types.UINT8, layout="HWC", no_copy=True)
        return images.gpu() if device == "gpu" else images
    encoded = fn.external_source(name="images", dtype=types.UINT8, no_copy=True)
    return augment.decode(encoded, device)


def labels_input(device: str):
    """The fed int32 ``labels`` on ``device``."""
    labels = fn.external_source(name="labels", dtype=types.INT32)
    return labels.gpu() if device == "gpu" else labels


def _mean_image(mean_image, device: str):
    return None if mean_image is None else types.Constant(mean_image, layout="HWC", device=device)


@pipeline_def
def train_pipeline(*, device, encoding, crop, std, mean_image, out_type, layout):
    images, labels = images_input(device, encoding), labels_input(device)
    crop_x = fn.external_source(name="crop_x", dtype=types.FLOAT)
    crop_y = fn.external_source(name="crop_y", dtype=types.FLOAT)
    mirror = fn.external_source(name="mirror", dtype=types.INT32)
    shift = fn.external_source(name="shift", dtype=types.FLOAT)
    out = augment.crop_normalize(images, crop, crop_x, crop_y, mirror, shift, std,
                                 _mean_image(mean_image, device), out_type, layout)
    return out, labels


@pipeline_def
def val_pipeline(*, device, encoding, crop, window, mean, std, mean_image, out_type, layout):
    """``window``: the fixed (crop_x, crop_y) fractions of the centre crop; ``mean`` a constant."""
    images, labels = images_input(device, encoding), labels_input(device)
    out = augment.crop_normalize(images, crop, window[0], window[1], 0, mean, std,
                                 _mean_image(mean_image, device), out_type, layout)
    return out, labels


@pipeline_def
def ten_crop_pipeline(*, device, encoding, crop, windows, mean, std, mean_image, out_type, layout):
    images, labels = images_input(device, encoding), labels_input(device)
    out = augment.ten_crop(images, crop, windows, mean, std, _mean_image(mean_image, device),
                           out_type, layout)
    return out, labels
