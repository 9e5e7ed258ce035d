"""The augmentation graph as plain DALI functions (paper section 4.1), CPU and GPU alike.

Every random decision arrives as a per-sample input (crop positions, flip bit, the lighting
shift folded into ``mean``), drawn by pipeline/load/sampler.py, so a NumPy reference fed the same
decisions reproduces the output exactly. Per sample, in pixel units 0..255:

    out = flip?(crop(image + shift)) - flip?(crop(mean_image))        mean="pixel"
    out = (flip?(crop(image)) + shift - channel_mean) / channel_std    mean="channel"
    out = flip?(crop(image)) + shift                                   mean="none"

where shift = eigvec @ (alpha * s) is the same RGB value for every pixel (lighting_shift below:
s = sqrt(eigval), or eigval / 255 for the paper's form; zero for val). No clipping after it.

The mean image is subtracted at full size, before the crop (one arithmetic op, then one
crop_mirror_normalize of float pixels): 1.3x more pixels than cropping the mean image with the
same window and subtracting after, but one pass fewer, and measured 1.37x faster on the CPU (2,584
against 1,880 images/s, 256 px, crop 224, batch 256, 2 threads; the results agree within 2e-5).
Ten-crop subtracts it once for its ten windows.
"""
from __future__ import annotations

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types


def crop_normalize(images, crop: int, crop_x, crop_y, flip, mean, std, mean_image, out_type,
                   layout: str):
    """One crop window per sample. ``crop_x``/``crop_y`` (crop positions) are fractions of
    (size - crop), as crop_mirror_normalize takes them; ``mean``/``std`` per-sample or constant
    3-vectors."""
    if mean_image is not None:
        images = images - mean_image  # float32, full size (uint8 - float)
    # out_type FLOAT or FLOAT16, written by the op itself (computed in float, rounded once)
    return fn.crop_mirror_normalize(images, mean=mean, std=std, dtype=out_type, crop=(crop, crop),
                                    crop_pos_x=crop_x, crop_pos_y=crop_y, mirror=flip,
                                    output_layout=layout)


def normalize(images, mean, std, out_type, layout: str, flip=0):
    """``images``: each sample's crop window already, cut and mirrored by the gatherer (gather.py,
    sequences: FHWC) or decoded alone (``decode``'s ``window``, mirrored here by ``flip``): the
    normalisation as crop_normalize, written as ``out_type`` in ``layout``."""
    return fn.crop_mirror_normalize(images, mean=mean, std=std, dtype=out_type, mirror=flip,
                                    output_layout=layout)


def ten_crop(images, crop: int, windows, mean, std, mean_image, out_type, layout: str):
    """The paper's test: the 4 corners and the centre, and their mirrors, stacked per sample:
    (10, C, crop, crop) for layout CHW. ``windows`` holds (fx, fy, flip) constants."""
    if mean_image is not None:
        images = images - mean_image  # once for the ten windows
    crops = [crop_normalize(images, crop, fx, fy, int(m), mean, std, None, out_type, layout)
             for fx, fy, m in windows]
    return fn.stack(*crops, axis=0)


def decode(encoded, device: str, window=None):
    """JPEG payloads -> uint8 HWC RGB; on the GPU with nvJPEG (``mixed``: host parse, GPU decode).
    ``window`` = (crop, crop_x, crop_y): only that window is decoded (libjpeg-turbo skips the rows
    above and below it and the blocks beside it; the pixels are those of the whole image's decode,
    checked against Pillow in tests/test_loader.py)."""
    dev = "mixed" if device == "gpu" else "cpu"
    if window is None:
        return fn.decoders.image(encoded, device=dev, output_type=types.RGB)
    crop, crop_x, crop_y = window
    return fn.decoders.image_crop(encoded, device=dev, output_type=types.RGB, crop=(crop, crop),
                                  crop_pos_x=crop_x, crop_pos_y=crop_y)


# -- the numbers the graph is fed (numpy; the random draws are sampler.py's) --------------------

def lighting_shift(alpha: np.ndarray, eigval: np.ndarray, eigvec: np.ndarray, form: str) -> np.ndarray:
    """The PCA lighting shift (N, 3): one RGB value added to every pixel of each image, in pixel
    units 0..255 (paper section 4.1). ``eigval`` is in pixel^2 units (stats.npz).

    ``form="code"``: eigvec @ (alpha * sqrt(eigval)), the 2012 source code's scale (default,
    ~12 grey levels on ImageNet with alpha ~ N(0, 0.1));
    ``form="paper"``: eigvec @ (alpha * eigval / 255): the paper writes lambda for pixels in
    [0, 1], which is eigval / 255^2 in those units, times 255 back to pixel units (~5 levels)."""
    if form == "code":
        scale = np.sqrt(np.maximum(eigval, 0.0))
    elif form == "paper":
        scale = eigval / 255.0
    else:
        raise ValueError(f"lighting_form must be 'code' or 'paper', got {form!r}")
    return (alpha * scale) @ eigvec.T


def ten_crop_windows(size: int, crop: int) -> list[tuple[int, int, bool]]:
    """(x, y, flip) of the paper's test crops, positions in pixels: four corners, centre, then
    their mirrors."""
    c, e = (size - crop) // 2, size - crop
    base = [(0, 0), (e, 0), (0, e), (e, e), (c, c)]
    return [(x, y, False) for x, y in base] + [(x, y, True) for x, y in base]
