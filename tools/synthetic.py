"""Generated, learnable, photo-like images: the embedded default of the demo, the tests' and the
benchmarks' inputs when no ImageNet is at hand.

Each class has its own hue, stripe orientation and blob layout; every image adds fine texture and
noise so its JPEG is photo-sized (quality 90, 500x375 .. 1024x768 by default), not a flat
gradient that would make decoding look unrealistically cheap.
"""
from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_SIZES = ((500, 375), (375, 500), (640, 480), (500, 333), (800, 600), (1024, 768))


def wnid(k: int) -> str:
    """A WordNet-style id, sorted in the same order as k."""
    return f"n{1440764 + 1000 * k:08d}"


def photo(rng: np.random.Generator, width: int, height: int, label: int, n_classes: int) -> np.ndarray:
    """uint8 (height, width, 3): a textured image whose look depends on ``label``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= max(height, width)
    x /= max(height, width)
    theta = np.pi * label / max(n_classes, 1)
    freq = 6 + 3 * (label % 4)
    stripes = np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + rng.uniform(0, 6.3))
    hue = (label / max(n_classes, 1) + rng.normal(0, 0.02)) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, 0.7, 0.85), dtype=np.float32)
    other = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.5, 0.5), dtype=np.float32)
    mix = 0.5 + 0.35 * stripes
    img = mix[..., None] * base + (1 - mix[..., None]) * other
    for _ in range(3):  # a few soft blobs at random places
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-0.3, 0.3, 3).astype(np.float32)
    # Fine texture: a random sinusoid field plus pixel noise (what makes real JPEGs big).
    fx, fy = rng.uniform(40, 120, 2)
    img += 0.06 * np.sin(2 * np.pi * (fx * x + fy * y))[..., None]
    img += rng.normal(0, 0.04, img.shape).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_imagefolder(root, n_classes: int = 10, train_per_class: int = 20, val_per_class: int = 5,
                     sizes=PHOTO_SIZES, seed: int = 0, quality: int = 90, workers: int = 1) -> Path:
    """Write an ImageNet-shaped tree root/{train,val}/<wnid>/<wnid>_<i>.JPEG; return root.

    workers > 1: each class of each split in its own process, from a generator seeded by (seed,
    split, class): as many images of the same kind, but not the same images as workers=1 gives
    (one generator for the whole tree, the tests' and the demo's data). ~60 ms an image of
    1024x768 on one core, so thousands of photo-sized images want the cores."""
    root = Path(root)
    jobs = [(root, split, label, per_class, tuple(sizes), seed, quality, n_classes)
            for split, per_class in (("train", train_per_class), ("val", val_per_class))
            for label in range(n_classes)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            list(pool.map(_one_class, jobs))
        return root
    rng = np.random.default_rng(seed)
    for job in jobs:
        _one_class(job, rng)
    return root


def _one_class(job, rng: np.random.Generator | None = None) -> None:
    root, split, label, per_class, sizes, seed, quality, n_classes = job
    if rng is None:
        rng = np.random.default_rng([seed, ("train", "val").index(split), label])
    folder = root / split / wnid(label)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        w, h = sizes[rng.integers(len(sizes))]
        path = folder / f"{wnid(label)}_{i}.JPEG"
        path.write_bytes(jpeg_bytes(photo(rng, w, h, label, n_classes), quality))
