"""CIFAR-10 and CIFAR-100 "python version" pickles, in SRC itself or in the folder their archive
unpacks to (``cifar-10-batches-py/``, ``cifar-100-python/``):

- CIFAR-10:  train ``data_batch_1`` .. ``data_batch_5`` (all five), val ``test_batch`` (optional),
  class names ``batches.meta`` ``label_names``; labels from ``labels``.
- CIFAR-100: train ``train``, val ``test`` (optional), class names ``meta``
  ``fine_label_names``; labels from ``fine_labels`` (the 100 classes; ``coarse_labels``, the 20
  superclasses, are not used).

Each batch is a Python-2 pickle of a dict with bytes keys: ``data`` is uint8 (N, 3072), a row per
image holding the 32x32 R plane, then G, then B (CHW); ``read_array`` returns it as uint8
(32, 32, 3) HWC RGB. The pickles are read with a restricted unpickler that only builds plain
containers and NumPy arrays (a pickle can otherwise run arbitrary code).

Classes: ids are the label indices as decimal strings zero-padded to the width of the largest
(``"0"``..``"9"`` for CIFAR-10, ``"00"``..``"99"`` for CIFAR-100), so the sorted ids keep the
original label order (label = index, as in the pickles); names are the meta file's label names
(``airplane``, ...). Items: ``source`` is ``<batch file relative to SRC>#<index>`` (index from 0
within that file; e.g. ``cifar-10-batches-py/data_batch_3#999``), the locator ``("array",
"cifar", <batch file>, index)``, ``nbytes`` 3072. Train is the batches in order, each in file
order. A missing file, a pickle that does not unpickle or lacks the expected keys, data of the
wrong type or shape, a label count that differs from the image count, or a label outside the
class names is a ``LayoutError`` naming the file.

Each batch is decoded once per process and kept (so workers forked after ``detect`` share the
parent's copy).
"""
from __future__ import annotations

import codecs
import functools
import os
import pickle
from pathlib import Path

import numpy as np

from . import Item, Layout, LayoutError

try:  # NumPy >= 2 (pickles written by NumPy 1.x name numpy.core, which NumPy 2 renamed)
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

SIDE = 32
RECORD = 3 * SIDE * SIDE

VARIANTS = {
    "cifar-10": {"folder": "cifar-10-batches-py", "meta": "batches.meta", "names_key": "label_names",
                 "labels_key": "labels", "train": [f"data_batch_{k}" for k in range(1, 6)],
                 "val": "test_batch"},
    "cifar-100": {"folder": "cifar-100-python", "meta": "meta", "names_key": "fine_label_names",
                  "labels_key": "fine_labels", "train": ["train"], "val": "test"},
}

# The only globals a CIFAR pickle references: NumPy's array reconstruction (under its NumPy 1 and
# NumPy 2 module names) and, for pickles re-written by Python 3 at protocol <= 2, bytes objects.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"references {module}.{name}, which a CIFAR pickle never "
                                         f"does (refused: unpickling it could run code)") from None


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _hwc(data) -> np.ndarray | None:
    """uint8 (N, 32, 32, 3) HWC, read-only, from the pickle's (N, 3072) CHW rows; None if data is
    not that."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != RECORD:
        return None
    out = np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=16)
def _unpickle(path: str, mtime_ns: int, size: int) -> tuple[dict, np.ndarray | None]:
    """(the pickle's dict with str keys (the originals are bytes), its ``data`` in HWC form or
    None when it has no well-formed ``data``). The HWC copy replaces the CHW original, which is
    not kept."""
    try:
        with open(path, "rb") as f:
            obj = _Unpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OSError, MemoryError) as e:
        raise LayoutError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise LayoutError(f"{path}: holds a {type(obj).__name__}, expected the dict of a CIFAR "
                          f"python-version file")
    d = {_text(k): v for k, v in obj.items()}
    hwc = _hwc(d.get("data"))
    if hwc is not None:
        d["data"] = "(converted to HWC)"
    return d, hwc


def _load(path: Path) -> tuple[dict, np.ndarray | None]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise LayoutError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    return _unpickle(str(path), st.st_mtime_ns, st.st_size)


def _need(path: Path, d: dict, key: str):
    if key not in d:
        raise LayoutError(f"{path}: no {key!r} entry (has {sorted(d)})")
    return d[key]


def _batch(path: Path) -> np.ndarray:
    """The batch's images, uint8 (N, 32, 32, 3)."""
    d, hwc = _load(path)
    if hwc is None:
        data = _need(path, d, "data")
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise LayoutError(f"{path}: 'data' is {desc}, expected uint8 (N, {RECORD}): rows of 32x32 "
                          f"R, G, B planes")
    return hwc


def read_array(src, rel: str, index: int) -> np.ndarray:
    """uint8 (32, 32, 3) HWC RGB pixels of image ``index`` of the batch file ``rel``."""
    return _batch(Path(src) / rel)[index]


def _labels(path: Path, key: str, count: int, n_classes: int) -> list[int]:
    labels = _need(path, _load(path)[0], key)
    try:
        arr = np.asarray(labels)
        ok = arr.ndim == 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise LayoutError(f"{path}: {key!r} is not a list of integer labels")
    if len(arr) != count:
        raise LayoutError(f"{path}: {count} images but {len(arr)} {key!r}")
    bad = np.flatnonzero((arr < 0) | (arr >= n_classes))
    if len(bad):
        raise LayoutError(f"{path}: {key}[{bad[0]}] = {arr[bad[0]]}, outside the {n_classes} "
                          f"class names")
    return arr.tolist()


def _variants_in(d: Path, src: Path) -> list[tuple[str, Path]]:
    """The CIFAR sets whose files are in d (d is SRC or one of the archives' folders)."""
    found = []
    for name, v in VARIANTS.items():
        files = [v["meta"], *v["train"], v["val"]]
        present = [f for f in files if (d / f).is_file()]
        if name == "cifar-100" and d == src:
            # "train" and "test" alone are too generic to claim SRC: the meta file must be there too.
            if (d / v["meta"]).is_file() and len(present) > 1:
                found.append((name, d))
        elif present:
            found.append((name, d))
    return found


def detect(src: Path) -> Layout | None:
    found = []
    for d in (src, *(src / v["folder"] for v in VARIANTS.values())):
        if d.is_dir():
            found += _variants_in(d, src)
    if not found:
        return None
    if len(found) > 1:
        where = "; ".join(f"{name} in {d}" for name, d in found)
        raise LayoutError(f"{src}: holds more than one CIFAR set ({where}); point SRC at one of them")
    name, d = found[0]
    v = VARIANTS[name]
    missing = [f for f in (v["meta"], *v["train"]) if not (d / f).is_file()]
    if missing:
        raise LayoutError(f"{d}: {name} is missing {', '.join(missing)} (needs {v['meta']} and "
                          f"{', '.join(v['train'])}; {v['val']} is optional)")
    meta_path = d / v["meta"]
    names = _need(meta_path, _load(meta_path)[0], v["names_key"])
    if not isinstance(names, (list, tuple)) or not names:
        raise LayoutError(f"{meta_path}: {v['names_key']!r} is not a list of class names")
    names = [_text(n) for n in names]
    width = len(str(len(names) - 1))
    classes = [f"{k:0{width}d}" for k in range(len(names))]
    split_files = {"train": v["train"]}
    if (d / v["val"]).is_file():
        split_files["val"] = [v["val"]]
    splits = {}
    for split, files in split_files.items():
        items = []
        for f in files:
            path = d / f
            rel = path.relative_to(src).as_posix()
            images = _batch(path)
            labels = _labels(path, v["labels_key"], len(images), len(names))
            items += [Item(f"{rel}#{i}", label, ("array", "cifar", rel, i), RECORD)
                      for i, label in enumerate(labels)]
        splits[split] = items
    return Layout(name, classes, names, splits)
