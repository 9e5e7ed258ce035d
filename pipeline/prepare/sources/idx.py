"""IDX files (MNIST, Fashion-MNIST and anything else in that format), directly in SRC:

- train split: ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte``;
- val split:   ``t10k-images-idx3-ubyte``  + ``t10k-labels-idx1-ubyte`` (the IDX test set);

each plain or gzipped (``.gz``); ``train-images.idx3-ubyte`` (a dot before ``idx``) is accepted too.
When a file is present both plain and gzipped, the plain one is read and the ``.gz`` is listed as
ignored.

The format (big-endian): a 4-byte magic ``00 00 08 NDIM`` (0x08: unsigned bytes), NDIM uint32
dimensions, then the data. Images are ``0x00000803`` (count, rows, cols), labels ``0x00000801``
(count). A missing partner file, a bad magic, a count that differs between the images and their
labels, or data shorter or longer than the header says is a ``LayoutError`` naming the file.

Classes are the label values: ids ``"0"`` .. ``"<max label>"`` as decimal strings, zero-padded to
the width of the largest (``"0"``..``"9"`` for MNIST), so sorted ids keep the numeric order and
label = index. There are no class names: Fashion-MNIST uses the same file names as MNIST, and
its published checksums are those of the upstream ``.gz`` files (re-compressed copies, e.g.
Debian's, differ), so it cannot be told apart reliably from the files; its names are, by label,
T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.

Items: ``source`` is ``<images file>#<index>`` (index from 0 in file order), the locator
``("array", "idx", <images file>, index)``, ``nbytes`` = rows * cols. ``read_array`` returns the
uint8 (rows, cols) greyscale image; each file is decoded once per process (gzip decompressed once,
plain files memory-mapped) and kept, so workers forked after ``detect`` share the parent's copy.
"""
from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from . import Item, Layout, LayoutError

# split -> file-name prefix of the IDX set
PREFIX = {"train": "train", "val": "t10k"}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
NAMES = ("{prefix}-{kind}-{idx}", "{prefix}-{kind}.{idx}")  # the second: some mirrors' spelling


def _find(src: Path, prefix: str, kind: str, idx: str) -> tuple[str | None, list[str]]:
    """(the file to read, relative to src; names of duplicates to ignore)."""
    found = []
    for pattern in NAMES:
        name = pattern.format(prefix=prefix, kind=kind, idx=idx)
        for candidate in (name, name + ".gz"):  # plain first: it is faster to read
            if (src / candidate).is_file():
                found.append(candidate)
    return (found[0] if found else None), found[1:]


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise LayoutError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def _header(path: Path, head: bytes, magic: int, ndim: int) -> tuple[int, ...]:
    what = "images" if magic == IMAGES_MAGIC else "labels"
    if len(head) < 4:
        raise LayoutError(f"{path}: only {len(head)} bytes, too short for an IDX header")
    got = int.from_bytes(head[:4], "big")
    if got != magic:
        raise LayoutError(f"{path}: bad magic number 0x{got:08x}, expected 0x{magic:08x} "
                          f"(IDX unsigned-byte {what}, {ndim}-D)")
    if len(head) < 4 + 4 * ndim:
        raise LayoutError(f"{path}: the IDX header ends early ({len(head)} bytes, "
                          f"needs {4 + 4 * ndim})")
    return tuple(int.from_bytes(head[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))


def _check_size(path: Path, dims: tuple[int, ...], header_bytes: int, total: int) -> None:
    need = int(np.prod(dims))
    have = total - header_bytes
    if have != need:
        shape = " x ".join(str(d) for d in dims)
        raise LayoutError(f"{path}: {'truncated' if have < need else 'trailing data'}: the header says "
                          f"{shape} = {need} bytes of data, the file holds {have}")


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int, size: int, magic: int, ndim: int) -> np.ndarray:
    """The IDX array, read-only: memory-mapped for plain files, decompressed once for .gz."""
    p = Path(path)
    header_bytes = 4 + 4 * ndim
    if p.name.endswith(".gz"):
        data = _read_bytes(p)
        dims = _header(p, data[:header_bytes], magic, ndim)
        _check_size(p, dims, header_bytes, len(data))
        arr = np.frombuffer(data, np.uint8, offset=header_bytes).reshape(dims)
    else:
        try:
            with open(p, "rb") as f:
                head = f.read(header_bytes)
        except OSError as e:
            raise LayoutError(f"{p}: cannot read ({type(e).__name__}: {e})") from None
        dims = _header(p, head, magic, ndim)
        _check_size(p, dims, header_bytes, size)
        if int(np.prod(dims)) == 0:
            arr = np.zeros(dims, np.uint8)
        else:
            arr = np.memmap(p, np.uint8, "r", offset=header_bytes, shape=dims)
    arr.flags.writeable = False
    return arr


def _array(path: Path, magic: int, ndim: int) -> np.ndarray:
    try:
        st = os.stat(path)
    except OSError as e:
        raise LayoutError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    return _load(str(path), st.st_mtime_ns, st.st_size, magic, ndim)


def read_array(src, rel: str, index: int) -> np.ndarray:
    """uint8 (rows, cols) greyscale pixels of image ``index`` of the IDX images file ``rel``."""
    return np.asarray(_array(Path(src) / rel, IMAGES_MAGIC, 3)[index])


def read_split(src, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, rows, cols), labels (n,)) of ``split`` ("train" or "val") in SRC, found and
    checked as the converter finds and checks them: a ``LayoutError`` naming the file otherwise."""
    src, prefix = Path(src), PREFIX[split]
    images, _ = _find(src, prefix, "images", "idx3-ubyte")
    labels, _ = _find(src, prefix, "labels", "idx1-ubyte")
    if images is None or labels is None:
        raise LayoutError(f"{src}: no {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz]")
    return _array(src / images, IMAGES_MAGIC, 3), _array(src / labels, LABELS_MAGIC, 1)


def detect(src: Path) -> Layout | None:
    files, ignored = {}, []
    for split, prefix in PREFIX.items():
        images, dup_images = _find(src, prefix, "images", "idx3-ubyte")
        labels, dup_labels = _find(src, prefix, "labels", "idx1-ubyte")
        for name, chosen in [(n, images) for n in dup_images] + [(n, labels) for n in dup_labels]:
            ignored.append({"split": split, "source": name, "reason": f"duplicate of {chosen}, which is read"})
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            have, need = (images, "labels-idx1") if labels is None else (labels, "images-idx3")
            raise LayoutError(f"{src / have}: no matching {prefix}-{need}-ubyte[.gz] beside it "
                              f"(IDX images and labels come in pairs)")
        files[split] = (images, labels)
    if not files:
        return None
    arrays = {}
    for split, (images, labels) in files.items():
        x = _array(src / images, IMAGES_MAGIC, 3)
        y = _array(src / labels, LABELS_MAGIC, 1)
        if len(x) != len(y):
            raise LayoutError(f"{src / images}: {len(x)} images, but {src / labels} has {len(y)} labels")
        arrays[split] = (images, x, np.asarray(y))
    top = max((int(y.max()) for _, _, y in arrays.values() if len(y)), default=0)
    width = len(str(top))
    classes = [f"{k:0{width}d}" for k in range(top + 1)]
    splits = {}
    for split, (images, x, y) in arrays.items():
        nbytes = int(x.shape[1] * x.shape[2])
        splits[split] = [Item(f"{images}#{i}", int(label), ("array", "idx", images, i), nbytes)
                         for i, label in enumerate(y.tolist())]
    return Layout("idx", classes, None, splits, ignored)
