"""Input layouts the converter recognises from SRC alone, and how a worker reads one input.

``detect(src)`` returns a ``Layout``: the classes (sorted ids; index = label), optional class
names, and per split the list of ``Item``s in a deterministic order. Layouts are tried in order;
the first that matches wins, and when none does the error lists what was looked for.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UserError


class LayoutError(UserError):
    """SRC holds no recognisable layout, or its parts disagree (the message says which)."""


@dataclass(frozen=True)
class Item:
    source: str     # the input's path relative to SRC; through tar members for archives
    label: int
    locator: tuple  # ("file", relpath) | ("range", relpath, offset, nbytes)
    #                 | ("array", module, relpath, index): pixels decoded by sources.<module>.read_array
    nbytes: int     # input size, part of the job's fingerprint


@dataclass
class Layout:
    name: str
    classes: list[str]
    class_names: list[str] | None
    splits: dict[str, list[Item]]
    ignored: list[dict] = field(default_factory=list)  # {split, source, reason}: not converted


def read_input(src: Path, locator: tuple):
    """What the preprocessing function takes: encoded bytes, or a uint8 pixel array for layouts
    that store raw pixels (IDX, CIFAR pickles)."""
    if locator[0] == "array":
        _, module, rel, index = locator
        return importlib.import_module(f"{__name__}.{module}").read_array(src, rel, index)
    return read_bytes(src, locator)


def read_bytes(src: Path, locator: tuple) -> bytes:
    kind = locator[0]
    if kind == "file":
        return (src / locator[1]).read_bytes()
    if kind == "range":
        _, rel, offset, nbytes = locator
        with open(src / rel, "rb") as f:
            data = os.pread(f.fileno(), nbytes, offset)
        if len(data) != nbytes:
            raise OSError(f"{rel}: archive ends early (member at byte {offset} needs {nbytes} bytes)")
        return data
    raise ValueError(f"unknown locator {locator!r}")


def detect(src) -> Layout:
    from . import cifar, folders, idx, ilsvrc  # noqa: local import keeps the registry order explicit

    src = Path(src)
    if not src.exists():
        raise LayoutError(f"{src}: no such directory")
    if not src.is_dir():
        raise LayoutError(f"{src}: not a directory")
    for module in (ilsvrc, idx, cifar, folders):
        layout = module.detect(src)
        if layout is not None:
            return layout
    raise LayoutError(
        f"{src}: no recognised layout. Looked for: ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar "
        f"(with ILSVRC2012_devkit_t12.tar.gz or LOC_val_solution.csv for val labels); "
        f"IDX files train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] (and t10k-*: val); "
        f"CIFAR-10 pickles data_batch_1..5, test_batch, batches.meta (or in cifar-10-batches-py/); "
        f"CIFAR-100 pickles train, test, meta (or in cifar-100-python/); "
        f"train/<class>/* and val/<class>/* image folders. Found: "
        f"{sorted(p.name for p in src.iterdir())[:20]}")
