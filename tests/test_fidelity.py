"""tools/fidelity.py, the yardstick of the converter's tests and benchmark, against hand-computed
values (it must be right on its own: nothing else checks it)."""
import math

import numpy as np
from PIL import Image

from images import encode
from tools.fidelity import decode_full, psnr, reference


def test_psnr_hand_computed():
    a = np.full((8, 8, 3), 100, np.uint8)
    assert math.isclose(psnr(a, a + 1), 10 * math.log10(255 ** 2), rel_tol=1e-12)  # mse 1: 48.13 dB
    assert math.isclose(psnr(a + 2, a), 10 * math.log10(255 ** 2 / 4), rel_tol=1e-12)
    assert math.isclose(psnr(a, a), 10 * math.log10(255 ** 2 / 1e-10))  # identical: a finite 148.1 dB


def test_reference_of_a_constant_image_is_the_constant():
    out = reference(np.full((100, 300, 3), (77, 0, 255), np.uint8), 50)
    assert out.shape == (50, 50, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to([77, 0, 255], out.shape), atol=1e-3)


def test_reference_takes_the_centre_square():
    # a 3:1 panorama, red | green | blue thirds: the centre square is the green third
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[:, :100, 0], rgb[:, 100:200, 1], rgb[:, 200:, 2] = 255, 255, 255
    out = reference(rgb, 20)
    inner = out[:, 2:-2]  # the filter reaches ~2 px past the square's edges into red and blue
    np.testing.assert_allclose(inner, np.broadcast_to([0, 255, 0], inner.shape), atol=1e-3)
    tall = reference(np.ascontiguousarray(rgb.transpose(1, 0, 2)), 20)[2:-2]  # 1:3, the same in y
    np.testing.assert_allclose(tall, np.broadcast_to([0, 255, 0], tall.shape), atol=1e-3)


def test_reference_clips_the_bicubic_overshoot():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:, 20:] = 255  # a hard edge: bicubic rings below 0 and above 255
    out = reference(rgb, 80)
    assert out.min() == 0 and out.max() == 255


def test_decode_full_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 150 wide x 100 high, displayed rotated: 100 wide x 150 high
    data = encode(Image.new("RGB", (150, 100), (10, 200, 30)), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_full(data)
    assert out.shape == (150, 100, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - (10, 200, 30)).max() <= 3  # JPEG rounding of a flat colour
