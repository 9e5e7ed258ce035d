"""The compiled bicubic resampler against references computed apart from it: Pillow resampling
each channel as a 32-bit float image (tools.fidelity's reference, no 8-bit intermediate), Pillow's
own 8-bit resampler, and box geometry checked on images whose exact answer is known."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import synthetic
from tools.fidelity import reference
from pipeline.prepare.resample import coefficients, resize_box

ROOT = Path(__file__).resolve().parents[1]
ROUNDING = 0.5 + 1e-3  # one rounding to uint8, plus float32 accumulation error


def float_reference(rgb: np.ndarray, box, size: int) -> np.ndarray:
    """Pillow's float ("F") bicubic of each channel over ``box``, clipped to 0..255 at the end."""
    chans = [np.asarray(Image.fromarray(rgb[..., c].astype(np.float32), "F")
                        .resize((size, size), Image.Resampling.BICUBIC, box=box)) for c in range(3)]
    return np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.float64)


def centre(w: int, h: int):
    s = min(w, h)
    return ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)


def image(w: int, h: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(w * 7919 + h)
    if kind == "photo" and min(w, h) >= 16:
        return synthetic.photo(rng, w, h, label=1, n_classes=3)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noise: the worst case for overshoot


SHAPES = [(500, 333), (500, 375), (333, 500), (1024, 768), (1, 1), (2, 3), (100, 80)]


@pytest.mark.parametrize("size", [256, 32])
@pytest.mark.parametrize("kind", ["photo", "noise"])
@pytest.mark.parametrize("wh", SHAPES)
def test_centre_box_is_the_float_reference_rounded(wh, kind, size):
    rgb = image(*wh, kind)
    out = resize_box(rgb, centre(*wh), size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    err = out - reference(rgb, size).astype(np.float64)  # tools.fidelity computes its own box
    assert np.abs(err).max() <= ROUNDING


@pytest.mark.parametrize("box", [(10.25, 3.75, 300.6, 250.1), (0.5, 0.0, 499.5, 333.0),
                                 (123.0, 45.5, 124.5, 47.0), (0.0, 0.0, 500.0, 333.0)])
def test_odd_boxes(box):
    """Boxes that are not square, not centred, a pixel or two wide, or the whole image."""
    rgb = image(500, 333, "photo")
    out = resize_box(rgb, box, 64)
    assert np.abs(out - float_reference(rgb, box, 64)).max() <= ROUNDING


@pytest.mark.parametrize("wh", SHAPES)
def test_close_to_pillows_8bit_resampler(wh):
    """Pillow rounds and clips after each pass: ours differs from it by that much, not more."""
    for kind in ("photo", "noise"):
        rgb = image(*wh, kind)
        ours = resize_box(rgb, centre(*wh), 256).astype(np.float64)
        pil = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.Resampling.BICUBIC, box=centre(*wh)))
        pillow_error = np.abs(pil - reference(rgb, 256))
        assert (np.abs(ours - pil) <= pillow_error + ROUNDING).all()
        if kind == "photo" and min(wh) >= 16:
            assert np.abs(ours - pil).max() <= 4 and np.abs(ours - pil).mean() < 0.25


@pytest.mark.parametrize("x0, size", [(150.5, 100), (101.0, 100)])
def test_vertical_edge_lands_at_its_sub_pixel_position(x0, size):
    """A step from 0 to 255 between columns 199 and 200 (position 200.0 in pixel-edge units).
    Output pixel j is centred at x0 + (j + 0.5) * scale; the one centred on the edge sees a
    symmetric filter, so gets 127.5 (rounded either way), and its neighbours mirror each other.
    A half-pixel error in the box or the centres breaks all three."""
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[:, 200:] = 255
    scale = 100 / size if x0 == 150.5 else 200 / size
    box = (x0, 0.0, x0 + scale * size, 300.0)
    out = resize_box(rgb, box, size)[..., 0].astype(int)
    j = round((200.0 - x0) / scale - 0.5)
    assert x0 + (j + 0.5) * scale == 200.0
    assert np.isin(out[:, j], (127, 128)).all()  # 127.5 give or take float32: either rounding
    np.testing.assert_array_equal(out[:, :j] + out[:, 2 * j:j:-1], 255)  # antisymmetric about j
    assert (out[:, :j - 3] == 0).all() and (out[:, j + 4:] == 255).all()


def test_constant_image_stays_constant():
    rgb = np.empty((77, 91, 3), np.uint8)
    rgb[...] = (3, 128, 254)
    for box, size in [(centre(91, 77), 256), ((0.3, 1.7, 90.2, 60.0), 17), ((40.0, 30.0, 41.0, 31.0), 8)]:
        assert (resize_box(rgb, box, size) == (3, 128, 254)).all()


def test_coefficients_follow_pillows_bounds_and_sum_to_one():
    first, count, w = coefficients(500, 62.5, 437.5, 256)
    scale, support = 375 / 256, 2 * 375 / 256
    centres = 62.5 + (np.arange(256) + 0.5) * scale
    np.testing.assert_array_equal(first, np.maximum((centres - support + 0.5).astype(int), 0))
    np.testing.assert_array_equal(first + count, np.minimum((centres + support + 0.5).astype(int), 500))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert coefficients(500, 62.5, 437.5, 256)[2] is w  # cached: photos share sizes


def float32_in_order(rgb: np.ndarray, box, size: int) -> np.ndarray:
    """The resampler's arithmetic spelled out in NumPy, whole arrays at a time: the vertical sums,
    then the horizontal ones, each tap's product added in order in float32, one rounding. None of
    the kernel's layout (strips, transposes, rows and taps taken in pairs, 16-byte moves)."""
    h, w = rgb.shape[:2]
    yf, yn, yw = coefficients(h, box[1], box[3], size)
    xf, xn, xw = coefficients(w, box[0], box[2], size)
    x = rgb.astype(np.float32)
    rows = np.zeros((size, w, 3), np.float32)
    for i in range(size):
        for t in range(yn[i]):
            rows[i] = rows[i] + yw[i, t] * x[yf[i] + t]
    out = np.zeros((size, size, 3), np.float32)
    for j in range(size):
        for t in range(xn[j]):
            out[:, j] = out[:, j] + xw[j, t] * rows[:, xf[j] + t]
    return np.minimum(np.maximum(out + np.float32(0.5), np.float32(0.0)), np.float32(255.0)).astype(np.uint8)


@pytest.mark.parametrize("wh", [(500, 375), (375, 500), (37, 91), (300, 40), (5, 1), (1, 1), (64, 64)])
@pytest.mark.parametrize("size", [256, 97, 33, 1])
def test_bytes_are_the_float32_sums_in_order(wh, size):
    """Byte for byte: the same float32 operations in the same order give the same bytes on any CPU.
    Sizes cover strips of odd height (97 = 3 x 32 + 1), a last output column, one-pixel outputs."""
    rgb = np.random.default_rng(wh[0] * 31 + wh[1]).integers(0, 256, (wh[1], wh[0], 3), np.uint8)
    box = centre(*wh)
    np.testing.assert_array_equal(resize_box(rgb, box, size), float32_in_order(rgb, box, size))


def test_rejects_other_dtypes_and_shapes():
    with pytest.raises(ValueError):
        resize_box(np.zeros((4, 4, 3), np.float32), (0, 0, 4, 4), 2)
    with pytest.raises(ValueError):
        resize_box(np.zeros((4, 4), np.uint8), (0, 0, 4, 4), 2)


@pytest.mark.timeout(300)
def test_no_writable_cache_location_is_silent_and_correct(tmp_path):
    """Where numba finds no directory for its cache (read-only package and home), the resampler
    compiles in memory without a warning. Simulated with a cache locator that never finds one."""
    (tmp_path / "nowhere.py").write_text(textwrap.dedent("""
        class Never:
            @classmethod
            def from_function(cls, py_func, py_file):
                return None
        """))
    script = textwrap.dedent("""
        import numpy as np
        from pipeline.prepare.resample import resize_box
        from tools.fidelity import reference
        rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        assert np.abs(resize_box(rgb, (5.0, 0.0, 45.0, 40.0), 16) - reference(rgb, 16)).max() <= 0.501
        """)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}",
               NUMBA_CACHE_LOCATOR_CLASSES="nowhere.Never")
    res = subprocess.run([sys.executable, "-W", "error", "-c", script], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=280)
    assert res.returncode == 0 and res.stderr == "", res.stderr
