"""The converter's resize alone, per input size: the compiled resampler against Pillow's.

    python -m tools.bench.resample [--repeats=200]

For each photo size of tools.synthetic, one photo encoded as a JPEG (quality 90) and decoded with
Pillow as the converter does for inputs that are not plain JPEGs (``preprocess.decode``: DCT scaling
included, so 1024x768 is resized from 512x384; plain JPEGs come from simplejpeg, same pixels, no
copy), the centre box to 256 px: median milliseconds of one process thread over ``repeats`` calls
after a warm-up, for
    ours     pipeline.prepare.resample.resize_box on the decoded pixels (what to_rgb_square calls)
    copy     np.asarray of the decoded Pillow image (to_rgb_square's copy out of Pillow, on its
             Pillow path only)
    pillow   Image.resize(BICUBIC, box=...) on the Pillow image (the converter before issue 14)
and each one's largest difference from the float reference (tools/fidelity.py) in grey levels.
Prints a Markdown table; record it in BENCHMARKS.md with the machine.
"""
from __future__ import annotations

import time

import numpy as np
from PIL import Image

from pipeline.prepare.preprocess import centre_box, decode, encode_jpeg
from pipeline.prepare.resample import resize_box, warm_up
from tools import synthetic
from pipeline.cli import run_cli
from tools.fidelity import reference

SIZE = 256


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def resample(repeats: int = 200):
    """Median ms per call of the compiled resampler, the copy out of Pillow, and Pillow's resize.

    repeats: timed calls per input size, after one warm-up call
    """
    warm_up()
    print("| decoded size | box | ours ms | copy ms | pillow ms | pillow / (ours + copy) "
          "| ours max err | pillow max err |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for w, h in synthetic.PHOTO_SIZES:
        photo = synthetic.photo(np.random.default_rng(w * h), w, h, label=1, n_classes=3)
        img = decode(encode_jpeg(photo, 90), SIZE)  # the converter's decode, DCT scaling included
        rgb = np.asarray(img)
        w, h = img.size
        box = centre_box(w, h)
        ref = reference(rgb, SIZE)
        ours = _median_ms(lambda: resize_box(rgb, box, SIZE), repeats)
        copy = _median_ms(lambda: np.asarray(img), repeats)
        pil = _median_ms(lambda: img.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box), repeats)
        err_ours = np.abs(resize_box(rgb, box, SIZE) - ref).max()
        err_pil = np.abs(np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box)) - ref).max()
        print(f"| {w}×{h} | {min(w, h)} | {ours:.2f} | {copy:.2f} | {pil:.2f} | {pil / (ours + copy):.1f}× "
              f"| {err_ours:.2f} | {err_pil:.2f} |")


if __name__ == "__main__":
    run_cli(resample)
