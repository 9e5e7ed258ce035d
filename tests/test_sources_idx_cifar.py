"""IDX (MNIST-style) and CIFAR-10/100 pickle layouts, end to end: small files written here in the
originals' formats (IDX big-endian headers, gzipped and plain; Python-2-style pickles with bytes
keys at protocol 2), converted by the real converter and read back by the real reader. Every
stored image is compared with a reference computed here with NumPy/Pillow alone."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import pipeline
from pipeline.prepare.convert import convert
from pipeline.prepare.sources import LayoutError, cifar, detect, idx
from tools.fidelity import reference

from helpers import CIFAR10_NAMES, CIFAR100_NAMES, cifar_batch, dump, write_cifar10, write_cifar100

N_TRAIN, N_TEST = 30, 10
SHARD = 8
DIGITS = [str(k) for k in range(10)]

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


# ---------------------------------------------------------------------------------------- IDX

def idx_images(x: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x00000803, *x.shape) + x.astype(np.uint8).tobytes()


def idx_labels(y: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(y)) + y.astype(np.uint8).tobytes()


def write_idx(root: Path, data: dict, gz: bool, **override) -> Path:
    """data: {split: (images, labels)}; override: {file name: bytes} replaces a file's content."""
    root.mkdir(parents=True)
    for split, (x, y) in data.items():
        for name, payload in zip(IDX_FILES[split], (idx_images(x), idx_labels(y))):
            payload = override.get(name, payload)
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(payload, mtime=0))
            else:
                (root / name).write_bytes(payload)
    return root


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    rng = np.random.default_rng(28)
    data = {"train": (rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
                      rng.permutation(np.arange(N_TRAIN) % 10).astype(np.uint8)),
            "val": (rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
                    rng.permutation(np.arange(N_TEST) % 10).astype(np.uint8))}
    base = tmp_path_factory.mktemp("idx")
    srcs = {"gz": write_idx(base / "gz", data, gz=True), "plain": write_idx(base / "plain", data, gz=False)}
    outs = {}
    for (kind, size, workers) in [("gz", 32, 2), ("gz", 28, 1), ("plain", 32, 1), ("plain", 28, 1)]:
        out = base / f"out_{kind}_{size}"
        convert(srcs[kind], out, size=size, shard_size=SHARD, workers=workers, progress=False)
        outs[kind, size] = out
    return SimpleNamespace(data=data, srcs=srcs, outs=outs, base=base)


def grey_expected(grey: np.ndarray, size: int) -> np.ndarray:
    """float (size, size): what a 28 px grey digit must become, computed apart from the converter.
    At its own size: the grey values themselves. Upsampled: bicubic on a 32-bit float image (both
    passes in float, clipped to 0..255 once at the end, tools.fidelity's reference); the converter
    keeps no 8-bit intermediate, so it may differ from it by its final rounding only."""
    if size == grey.shape[0]:
        return grey.astype(np.float64)
    return reference(np.repeat(grey[..., None], 3, axis=2), size)[..., 0].astype(np.float64)


@pytest.mark.parametrize("kind,size", [("gz", 32), ("gz", 28), ("plain", 32), ("plain", 28)])
def test_idx_converts_exactly(mnist, kind, size):
    ds = pipeline.open_dataset(mnist.outs[kind, size], verify=True)
    assert ds.manifest["layout"] == "idx"
    assert ds.classes == DIGITS
    assert [c["name"] for c in ds.manifest["classes"]] == [None] * 10  # no guessed names
    assert ds.size == size
    suffix = ".gz" if kind == "gz" else ""
    train_pixels = []
    for split, n in (("train", N_TRAIN), ("val", N_TEST)):
        x, y = mnist.data[split]
        part = ds[split]
        assert len(part) == n
        seen = []
        for i in range(n):
            file, _, index = part.source(i).partition("#")
            assert file == IDX_FILES[split][0] + suffix, part.source(i)
            k = int(index)
            image, label = part[i]
            assert label == y[k] and part.labels[i] == y[k]
            assert image.shape == (size, size, 3)
            for c in (1, 2):  # grey: the same value in R, G and B
                np.testing.assert_array_equal(image[..., c], image[..., 0], err_msg=part.source(i))
            tolerance = 0 if size == 28 else 0.501
            np.testing.assert_allclose(image[..., 0], grey_expected(x[k], size), rtol=0, atol=tolerance,
                                       err_msg=part.source(i))
            if split == "train":
                train_pixels.append(image)
            seen.append(k)
        if split == "val":
            assert seen == list(range(n))  # val keeps file order
        else:
            assert sorted(seen) == list(range(n)) and seen != list(range(n))  # seeded shuffle
    mean = np.stack(train_pixels).reshape(-1, 3).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(ds.stats["channel_mean"], mean, rtol=1e-12)
    assert int(ds.stats["count"]) == N_TRAIN
    assert (mnist.outs[kind, size] / "skipped.json").read_text().strip() == "[]"


def test_idx_gz_and_plain_store_the_same_pixels(mnist):
    for size in (28, 32):
        a, b = (pipeline.open_dataset(mnist.outs[k, size]) for k in ("gz", "plain"))
        for split in ("train", "val"):
            np.testing.assert_array_equal(a[split].labels, b[split].labels)
            for i in range(len(a[split])):
                np.testing.assert_array_equal(a[split][i][0], b[split][i][0])


def test_idx_items_and_read_array(mnist):
    layout = detect(mnist.srcs["gz"])
    assert layout.name == "idx" and layout.class_names is None and layout.ignored == []
    item = layout.splits["train"][7]
    assert item.source == "train-images-idx3-ubyte.gz#7"
    assert item.locator == ("array", "idx", "train-images-idx3-ubyte.gz", 7)
    assert item.nbytes == 28 * 28 and item.label == mnist.data["train"][1][7]
    arr = idx.read_array(mnist.srcs["plain"], "t10k-images-idx3-ubyte", 3)
    assert arr.dtype == np.uint8 and arr.shape == (28, 28)
    np.testing.assert_array_equal(arr, mnist.data["val"][0][3])


def test_idx_gz_is_decompressed_once_per_process(mnist, monkeypatch):
    opened = []
    real_open = gzip.open
    monkeypatch.setattr(idx.gzip, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    idx._load.cache_clear()
    for i in range(N_TRAIN):
        np.testing.assert_array_equal(idx.read_array(mnist.srcs["gz"], "train-images-idx3-ubyte.gz", i),
                                      mnist.data["train"][0][i])
    assert len(opened) == 1


def test_idx_plain_and_gz_side_by_side_reads_plain(mnist, tmp_path):
    src = write_idx(tmp_path / "both", mnist.data, gz=False)
    (src / "train-images-idx3-ubyte.gz").write_bytes((mnist.srcs["gz"] / "train-images-idx3-ubyte.gz").read_bytes())
    layout = detect(src)
    assert layout.splits["train"][0].source.startswith("train-images-idx3-ubyte#")
    assert layout.ignored == [{"split": "train", "source": "train-images-idx3-ubyte.gz",
                               "reason": "duplicate of train-images-idx3-ubyte, which is read"}]


def _bad_idx(mnist, tmp_path, gz, **override):
    return write_idx(tmp_path / "bad", mnist.data, gz=gz, **override)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_bad_magic(mnist, tmp_path, gz):
    x, _ = mnist.data["train"]
    bad = struct.pack(">IIII", 0x00000801, *x.shape) + x.tobytes()
    src = _bad_idx(mnist, tmp_path, gz, **{"train-images-idx3-ubyte": bad})
    with pytest.raises(LayoutError, match=r"train-images-idx3-ubyte.*bad magic number 0x00000801.*0x00000803"):
        detect(src)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(mnist, tmp_path, gz):
    good = idx_images(mnist.data["val"][0])
    src = _bad_idx(mnist, tmp_path, gz, **{"t10k-images-idx3-ubyte": good[:-100]})
    with pytest.raises(LayoutError, match=r"t10k-images-idx3-ubyte.*truncated.*7840 bytes.*7740"):
        detect(src)


def test_idx_trailing_data(mnist, tmp_path):
    src = _bad_idx(mnist, tmp_path, False,
                   **{"train-labels-idx1-ubyte": idx_labels(mnist.data["train"][1]) + b"\0"})
    with pytest.raises(LayoutError, match=r"train-labels-idx1-ubyte: trailing data"):
        detect(src)


def test_idx_corrupt_gzip(mnist, tmp_path):
    src = write_idx(tmp_path / "bad", mnist.data, gz=True)
    path = src / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-500])  # the gzip stream ends early
    with pytest.raises(LayoutError, match=r"train-images-idx3-ubyte.gz: cannot read"):
        detect(src)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_count_mismatch(mnist, tmp_path, gz):
    y = mnist.data["train"][1][:-1]
    src = _bad_idx(mnist, tmp_path, gz, **{"train-labels-idx1-ubyte": idx_labels(y)})
    with pytest.raises(LayoutError, match=rf"train-images-idx3-ubyte.*{N_TRAIN} images, but "
                                          rf".*train-labels-idx1-ubyte.* has {N_TRAIN - 1} labels"):
        convert(src, tmp_path / "out", size=32, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing,present", [("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"),
                                             ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")])
def test_idx_missing_partner(mnist, tmp_path, missing, present):
    src = write_idx(tmp_path / "bad", mnist.data, gz=False)
    (src / missing).unlink()
    with pytest.raises(LayoutError, match=rf"{present}: no matching {missing}\[\.gz\]"):
        detect(src)


# -------------------------------------------------------------------------------------- CIFAR


@pytest.fixture(scope="module")
def cifar_data():
    rng = np.random.default_rng(10)
    c10 = {f"data_batch_{k}": (rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                               rng.integers(0, 10, 6)) for k in range(1, 6)}
    c10["test_batch"] = (rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8), np.arange(N_TEST))
    c100 = {"train": (rng.integers(0, 256, (N_TRAIN, 3072), dtype=np.uint8),
                      np.r_[99, 0, rng.integers(0, 100, N_TRAIN - 2)]),
            "test": (rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8), rng.integers(0, 100, N_TEST))}
    return SimpleNamespace(c10=c10, c100=c100)


@pytest.fixture(scope="module")
def cifars(tmp_path_factory, cifar_data):
    base = tmp_path_factory.mktemp("cifar")
    write_cifar10(base / "c10" / "cifar-10-batches-py", cifar_data.c10)  # as the archive unpacks
    write_cifar100(base / "c100", cifar_data.c100)  # files directly in SRC
    for name in ("c10", "c100"):
        convert(base / name, base / f"out_{name}", size=32, shard_size=SHARD, workers=1, progress=False)
    return base


def chw_to_hwc(row: np.ndarray) -> np.ndarray:
    return row.reshape(3, 32, 32).transpose(1, 2, 0)


@pytest.mark.parametrize("name", ["c10", "c100"])
def test_cifar_converts_exactly(cifars, cifar_data, name):
    ds = pipeline.open_dataset(cifars / f"out_{name}", verify=True)
    if name == "c10":
        files, prefix, names = cifar_data.c10, "cifar-10-batches-py/", CIFAR10_NAMES
        assert ds.manifest["layout"] == "cifar-10"
        assert ds.classes == DIGITS
        splits = {"train": [f"data_batch_{k}" for k in range(1, 6)], "val": ["test_batch"]}
    else:
        files, prefix, names = cifar_data.c100, "", CIFAR100_NAMES
        assert ds.manifest["layout"] == "cifar-100"
        assert ds.classes == [f"{k:02d}" for k in range(100)]
        splits = {"train": ["train"], "val": ["test"]}
    assert ds.classes == sorted(ds.classes)
    assert ds.class_names == names
    train_pixels = []
    for split, batch_names in splits.items():
        part = ds[split]
        assert len(part) == sum(len(files[b][1]) for b in batch_names)
        seen = []
        for i in range(len(part)):
            file, _, index = part.source(i).partition("#")
            assert file.startswith(prefix) and file[len(prefix):] in batch_names, part.source(i)
            batch, k = file[len(prefix):], int(index)
            data, labels = files[batch]
            image, label = part[i]
            assert label == labels[k] and part.labels[i] == labels[k], part.source(i)
            np.testing.assert_array_equal(image, chw_to_hwc(data[k]), err_msg=part.source(i))
            if split == "train":
                train_pixels.append(chw_to_hwc(data[k]))
            seen.append((batch, k))
        assert sorted(seen) == sorted((b, k) for b in batch_names for k in range(len(files[b][1])))
    mean = np.stack(train_pixels).reshape(-1, 3).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(ds.stats["channel_mean"], mean, rtol=1e-12)
    # the channels differ (the CHW planes were not mixed up): R, G, B means of the references
    assert len(set(np.round(mean, 9))) == 3


def test_cifar_items_and_read_array(cifars, cifar_data):
    src = cifars / "c10"
    layout = detect(src)
    item = layout.splits["train"][2 * 6 + 4]  # data_batch_3, index 4
    assert item.source == "cifar-10-batches-py/data_batch_3#4"
    assert item.locator == ("array", "cifar", "cifar-10-batches-py/data_batch_3", 4)
    assert item.nbytes == 3072 and item.label == cifar_data.c10["data_batch_3"][1][4]
    arr = cifar.read_array(src, "cifar-10-batches-py/test_batch", 9)
    assert arr.dtype == np.uint8 and arr.shape == (32, 32, 3)
    np.testing.assert_array_equal(arr, chw_to_hwc(cifar_data.c10["test_batch"][0][9]))
    # Red plane first: pixel (y, x) channel 0 is data[y * 32 + x]
    assert arr[5, 7, 0] == cifar_data.c10["test_batch"][0][9][5 * 32 + 7]
    assert arr[5, 7, 2] == cifar_data.c10["test_batch"][0][9][2048 + 5 * 32 + 7]


def test_cifar_batch_unpickled_once_per_process(cifars, monkeypatch):
    loads = []

    class Counting(cifar._Unpickler):
        def load(self):
            loads.append(1)
            return super().load()

    monkeypatch.setattr(cifar, "_Unpickler", Counting)
    cifar._unpickle.cache_clear()
    for i in range(6):
        cifar.read_array(cifars / "c10", "cifar-10-batches-py/data_batch_1", i)
    assert len(loads) == 1


def test_cifar10_in_src_itself_has_plain_sources(tmp_path, cifar_data):
    write_cifar10(tmp_path / "flat", cifar_data.c10, skip=("test_batch",))
    layout = detect(tmp_path / "flat")
    assert layout.name == "cifar-10" and list(layout.splits) == ["train"]
    assert layout.splits["train"][0].source == "data_batch_1#0"


@pytest.fixture
def c10_src(tmp_path, cifar_data):
    """A writable CIFAR-10 SRC for the malformed cases (top level)."""
    write_cifar10(tmp_path / "src", cifar_data.c10)
    return tmp_path / "src"


def test_cifar_missing_labels_key(c10_src, cifar_data):
    data, _ = cifar_data.c10["data_batch_2"]
    dump(c10_src / "data_batch_2", {b"batch_label": b"x", b"data": data})
    with pytest.raises(LayoutError, match=r"data_batch_2: no 'labels' entry \(has \['batch_label', 'data'\]\)"):
        detect(c10_src)


def test_cifar_count_mismatch(c10_src, cifar_data, tmp_path):
    data, labels = cifar_data.c10["data_batch_4"]
    dump(c10_src / "data_batch_4", cifar_batch(data, labels[:-1]))
    with pytest.raises(LayoutError, match=r"data_batch_4: 6 images but 5 'labels'"):
        convert(c10_src, tmp_path / "out", size=32, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_cifar_bad_data_shape(c10_src, cifar_data):
    data, labels = cifar_data.c10["data_batch_1"]
    dump(c10_src / "data_batch_1", cifar_batch(data[:, :3000].copy(), labels))
    with pytest.raises(LayoutError, match=r"data_batch_1: 'data' is uint8 \(6, 3000\), expected uint8 \(N, 3072\)"):
        detect(c10_src)


def test_cifar_label_out_of_range(c10_src, cifar_data):
    data, labels = cifar_data.c10["data_batch_5"]
    dump(c10_src / "data_batch_5", cifar_batch(data, [*labels[:3], 10, *labels[4:]]))
    with pytest.raises(LayoutError, match=r"data_batch_5: labels\[3\] = 10, outside the 10 class names"):
        detect(c10_src)


def test_cifar_truncated_pickle(c10_src):
    path = c10_src / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(LayoutError, match=r"test_batch: cannot unpickle"):
        detect(c10_src)


def test_cifar_missing_batch(c10_src):
    (c10_src / "data_batch_4").unlink()
    with pytest.raises(LayoutError, match=r"cifar-10 is missing data_batch_4"):
        detect(c10_src)


def test_cifar_meta_without_names(c10_src):
    dump(c10_src / "batches.meta", {b"num_vis": 3072})
    with pytest.raises(LayoutError, match=r"batches.meta: no 'label_names' entry"):
        detect(c10_src)


def test_cifar_not_a_dict(c10_src):
    dump(c10_src / "data_batch_1", [1, 2, 3])
    with pytest.raises(LayoutError, match=r"data_batch_1: holds a list, expected the dict"):
        detect(c10_src)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless here; a real attack would name os.system


def test_cifar_pickle_referencing_code_is_refused(c10_src):
    dump(c10_src / "data_batch_3", {b"data": _Payload(), b"labels": []})
    with pytest.raises(LayoutError, match=r"data_batch_3: cannot unpickle .*references posix.getcwd"):
        detect(c10_src)


def test_cifar_10_and_100_together_is_ambiguous(tmp_path, cifar_data):
    write_cifar10(tmp_path / "src" / "cifar-10-batches-py", cifar_data.c10)
    write_cifar100(tmp_path / "src" / "cifar-100-python", cifar_data.c100)
    with pytest.raises(LayoutError, match=r"more than one CIFAR set"):
        detect(tmp_path / "src")


def test_unrecognised_src_lists_the_new_layouts(tmp_path):
    (tmp_path / "README").write_text("nothing here")
    with pytest.raises(LayoutError) as e:
        detect(tmp_path)
    for needle in ("train-images-idx3-ubyte", "data_batch_1", "cifar-10-batches-py", "cifar-100-python"):
        assert needle in str(e.value)
