"""Round trip: our dataset -> .beton through FFCV's writer -> FFCV's own Loader, bit-exact."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import open_dataset
from tools.export_ffcv import export_beton

pytest.importorskip("ffcv")


def read_beton(path) -> tuple[np.ndarray, np.ndarray]:
    """All samples of a .beton in stored order, through FFCV's Loader on CPU."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(path), batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    # The Loader reuses its batch buffers: copy each batch before asking for the next.
    batches = [(images.copy(), labels.copy()) for images, labels in loader]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


@pytest.mark.parametrize("split", ["train", "val"])
def test_export_round_trip(dataset, tmp_path, split):
    out = export_beton(dataset, split, tmp_path / f"{split}.beton", num_workers=2)
    images, labels = read_beton(out)
    ours = open_dataset(dataset)[split]
    assert len(images) == len(labels) == len(ours) > 0
    for i in range(len(ours)):
        image, label = ours[i]
        assert images[i].dtype == np.uint8 and images[i].shape == image.shape == (32, 32, 3)
        np.testing.assert_array_equal(images[i], image, err_msg=f"{split}[{i}]")
        assert int(labels[i].item()) == label, f"{split}[{i}]"


def test_unknown_split(dataset, tmp_path):
    with pytest.raises(ValueError, match="no split 'test'"):
        export_beton(dataset, "test", tmp_path / "x.beton", num_workers=1)


def test_jpg_mode_stores_ffcv_jpegs_of_our_pixels(dataset, tmp_path):
    """write_mode="jpg": FFCV's JPEG mode at the given quality, decoded back by FFCV close to our
    pixels (PSNR against the raw dataset's), not equal to them, and further at a lower quality."""
    ours = open_dataset(dataset)["train"]

    def psnr(path):
        images, labels = read_beton(path)
        assert [int(x) for x in labels.ravel()] == [ours[i][1] for i in range(len(ours))]
        mse = np.mean([(images[i].astype(np.float64) - ours[i][0]) ** 2 for i in range(len(ours))])
        return 10 * np.log10(255 ** 2 / mse)

    high = psnr(export_beton(dataset, "train", tmp_path / "q95.beton", num_workers=1, write_mode="jpg", quality=95))
    low = psnr(export_beton(dataset, "train", tmp_path / "q20.beton", num_workers=1, write_mode="jpg", quality=20))
    assert 20 < high < 80 and low < high - 2, (high, low)  # 32 px synthetic content: 26 / 23 dB measured
    with pytest.raises(ValueError, match="write_mode"):
        export_beton(dataset, "train", tmp_path / "x.beton", write_mode="png")
