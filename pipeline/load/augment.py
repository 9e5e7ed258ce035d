"""The augmentation graph as plain DALI functions (paper section 4.1), CPU and GPU alike.

Every random decision arrives as a per-sample input (crop positions, mirror bit, the lighting
shift folded into ``mean``), drawn by pipeline/sampler.py, so a NumPy reference fed the same
decisions reproduces the output exactly. Per sample, in pixel units 0..255:

    out = flip?(crop(image + shift)) - flip?(crop(mean_image))        mean="pixel"
    out = (flip?(crop(image)) + shift - channel_mean) / channel_std    mean="channel"
    out = flip?(crop(image)) + shift                                   mean="none"

where shift = eigvec @ (alpha * s) is the same RGB value for every pixel (sampler.lighting_shift:
s = sqrt(eigval), or eigval / 255 for the paper's form; zero for val). No clipping after it.

The mean image is subtracted at full size, before the crop (one arithmetic op, then one
crop_mirror_normalize of float pixels): 1.3x more pixels than cropping the mean image with the
same window and subtracting after, but one pass fewer, and measured 1.37x faster on the CPU (2,584
against 1,880 images/s, 256 px, crop 224, batch 256, 2 threads; the results agree within 2e-5).
Ten-crop subtracts it once for its ten windows.
"""
from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.types as types


def crop_normalize(images, crop: int, crop_x, crop_y, mirror, mean, std, mean_image, out_type,
                   layout: str):
    """One crop window per sample. ``crop_x``/``crop_y`` (crop positions) are fractions of
    (size - crop), as crop_mirror_normalize takes them; ``mean``/``std`` per-sample or constant
    3-vectors."""
    if mean_image is not None:
        images = images - mean_image  # float32, full size (uint8 - float)
    # out_type FLOAT or FLOAT16, written by the op itself (computed in float, rounded once)
    return fn.crop_mirror_normalize(images, mean=mean, std=std, dtype=out_type, crop=(crop, crop),
                                    crop_pos_x=crop_x, crop_pos_y=crop_y, mirror=mirror,
                                    output_layout=layout)


def ten_crop(images, crop: int, windows, mean, std, mean_image, out_type, layout: str):
    """The paper's test: the 4 corners and the centre, and their mirrors, stacked per sample:
    (10, C, crop, crop) for layout CHW. ``windows`` holds (fx, fy, mirror) constants."""
    if mean_image is not None:
        images = images - mean_image  # once for the ten windows
    crops = [crop_normalize(images, crop, fx, fy, int(m), mean, std, None, out_type, layout)
             for fx, fy, m in windows]
    return fn.stack(*crops, axis=0)


def decode(encoded, device: str):
    """JPEG payloads -> uint8 HWC RGB; on the GPU with nvJPEG (``mixed``: host parse, GPU decode)."""
    return fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu",
                             output_type=types.RGB)
