"""Exact integer moments for the train statistics, against Python integers."""
import numpy as np
import pytest

from pipeline.prepare.stats import Accumulator, moments


def python_moments(img: np.ndarray) -> np.ndarray:
    x = img.reshape(-1, 3).astype(object)  # Python ints: no overflow, no rounding
    return np.array(x.T.dot(x), dtype=np.int64)


@pytest.mark.parametrize("shape", [(7, 5, 3), (256, 256, 3), (300, 300, 3)])
def test_moments_exact(shape, rng):
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(moments(img), python_moments(img))


def test_moments_do_not_wrap_past_uint32():
    """All-255 pixels: each entry is n * 255**2 > 2**32, and > 2**31 within a single image row."""
    img = np.full((300, 300, 3), 255, np.uint8)
    assert 300 * 300 * 255 ** 2 > 2 ** 32
    np.testing.assert_array_equal(moments(img), np.full((3, 3), 300 * 300 * 255 ** 2, np.int64))
    acc = Accumulator(300)
    for _ in range(3):
        acc.add(img)
    np.testing.assert_array_equal(acc.moment, np.full((3, 3), 3 * 300 * 300 * 255 ** 2, np.int64))
    assert (acc.pixel_sum == 3 * 255).all()


def test_add_takes_only_its_own_shape(rng):
    acc = Accumulator(16)
    for bad in (np.zeros((16, 16, 3), np.float32), np.zeros((16, 17, 3), np.uint8)):
        with pytest.raises(ValueError):
            acc.add(bad)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    acc.add(np.asfortranarray(img))  # any memory layout
    assert acc.count == 1
    np.testing.assert_array_equal(acc.pixel_sum, img)
    np.testing.assert_array_equal(acc.moment, python_moments(img))


def test_partials_merge_to_the_whole(rng):
    imgs = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    whole, a, b = Accumulator(16), Accumulator(16), Accumulator(16)
    for k, img in enumerate(imgs):
        whole.add(img)
        (a if k % 2 else b).add(img)
    b.merge(Accumulator.from_state(a.state()))
    assert b.count == whole.count == 6
    np.testing.assert_array_equal(b.moment, whole.moment)
    np.testing.assert_array_equal(b.pixel_sum, imgs.astype(np.int64).sum(0))
    np.testing.assert_array_equal(b.moment, python_moments(imgs))


def test_pixel_sums_stay_exact_past_the_uint16_buffer():
    """All-255 images, more than the uint16 buffer holds (257 x 255 = 65535), read part-way too."""
    acc = Accumulator(4)
    img = np.full((4, 4, 3), 255, np.uint8)
    for n in range(1, 700):
        acc.add(img)
        if n in (1, 100, 600):  # 500 images between the last two reads
            assert (acc.pixel_sum == n * 255).all() and acc.count == n
    assert (acc.pixel_sum == 699 * 255).all()
    assert acc.finalize()["mean_image"].min() == 255.0
