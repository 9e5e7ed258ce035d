"""How close preprocessed pixels are to the ideal: an independent float reference of the paper's
preprocessing (short side resized to ``size``, centre square) and PSNR against it. The yardstick of
``pipeline.prepare.preprocess.to_rgb_square``, used by its tests and by ``tools/benchmark.py
prepare``. Independent on purpose, so that it can disagree with the converter: a full-resolution
decode (no JPEG draft), the centred square computed here (not the converter's ``centre_box``), and
each channel resampled as a 32-bit float image (no 8-bit intermediate)."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps


def decode_full(data: bytes) -> np.ndarray:
    """uint8 (H, W, 3): full-resolution RGB decode, no draft, EXIF orientation applied."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def reference(rgb: np.ndarray, size: int) -> np.ndarray:
    """float32 (size, size, 3) from uint8 RGB (H, W, 3): each channel resampled (bicubic) as a
    float image over the exact centred square of side min(H, W), then clipped to 0..255 as any
    uint8 result must be (bicubic overshoots at edges)."""
    h, w, _ = rgb.shape
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    chans = [np.asarray(Image.fromarray(rgb[..., c].astype(np.float32), "F")
                        .resize((size, size), Image.Resampling.BICUBIC, box=box)) for c in range(3)]
    return np.clip(np.stack(chans, axis=-1), 0, 255)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for pixel values 0..255; identical images give 148 dB
    (mse floored at 1e-10), a finite figure that JSON can hold."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))
