"""ILSVRC-2012 archives, read in place (never extracted):

- ``ILSVRC2012_img_train.tar``: a tar of 1,000 per-class tars ``<wnid>.tar`` of JPEGs;
- ``ILSVRC2012_img_val.tar``: 50,000 flat ``ILSVRC2012_val_%08d.JPEG``;
- val labels from ``ILSVRC2012_devkit_t12.tar.gz`` (``data/meta.mat`` + ``data/
  ILSVRC2012_validation_ground_truth.txt``, whose ids are the devkit's ILSVRC2012_ID, NOT the
  sorted-wnid order, and meta.mat lists non-leaf synsets too) or from ``LOC_val_solution.csv``.

Only tar headers are read while scanning; each image is later read by byte range (``pread``)
from the outer archive, so workers decode straight from the tar.
"""
from __future__ import annotations

import csv
import functools
import io
import re
import tarfile
from pathlib import Path

from . import Item, Layout, LayoutError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
LOC_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")


def _members(tar: tarfile.TarFile):
    for m in tar:
        if m.isfile():
            yield m


@functools.lru_cache(maxsize=4)
def read_devkit(path: Path) -> tuple[dict[int, tuple[str, str]], list[int]]:
    """({ILSVRC2012_ID: (wnid, words)} for the 1,000 leaf classes, [val ground-truth ids])."""
    from scipy.io import loadmat

    try:
        with tarfile.open(path, "r:*") as tar:
            names = {Path(m.name).name: m for m in _members(tar)}
            for need in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
                if need not in names:
                    raise LayoutError(f"{path}: devkit has no data/{need}")
            meta = loadmat(io.BytesIO(tar.extractfile(names["meta.mat"]).read()), squeeze_me=True)
            truth = tar.extractfile(names["ILSVRC2012_validation_ground_truth.txt"]).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise LayoutError(f"{path}: cannot read devkit archive: {e}") from None
    synsets = {}
    try:
        for s in meta["synsets"]:
            if int(s["num_children"]) == 0:  # leaves are the 1,000 classes; the rest is the hierarchy
                synsets[int(s["ILSVRC2012_ID"])] = (str(s["WNID"]), str(s["words"]))
        val_ids = [int(line) for line in truth.decode().split()]
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise LayoutError(f"{path}: meta.mat or the ground truth is not in the ILSVRC-2012 devkit "
                          f"format ({type(e).__name__}: {e})") from None
    return synsets, val_ids


def read_loc_csv(path: Path) -> dict[str, str]:
    """LOC_val_solution.csv -> {ImageId: wnid of the first box}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows}
    except (KeyError, IndexError):
        raise LayoutError(f"{path}: expected columns ImageId,PredictionString") from None


def class_names(src: Path, classes: list[str], also: tuple[Path, ...] = ()) -> list[str] | None:
    """Human-readable names from a devkit or LOC_synset_mapping.txt in SRC (or the ``also``
    folders, e.g. the Kaggle root above CLS-LOC/), when present."""
    names: dict[str, str] = {}
    for folder in (src, *also):
        if (folder / DEVKIT).exists():
            names = {wnid: words for wnid, words in read_devkit(folder / DEVKIT)[0].values()}
        elif (folder / SYNSET_MAPPING).exists():
            for line in (folder / SYNSET_MAPPING).read_text().splitlines():
                wnid, _, words = line.partition(" ")
                names[wnid] = words.strip()
        if names:
            break
    if not names or not any(c in names for c in classes):
        return None
    return [names.get(c, c) for c in classes]


def _scan_train(src: Path) -> dict[str, list[tuple[str, int, int]]]:
    """{wnid: [(member source, absolute offset, nbytes)]} from the tar of tars (headers only)."""
    path = src / TRAIN_TAR
    per_class = {}
    try:
        with tarfile.open(path, "r:") as outer:
            for m in _members(outer):
                name = m.name.removeprefix("./")
                if not name.endswith(".tar"):
                    raise LayoutError(f"{path}: member {m.name!r} is not a per-class tar")
                with tarfile.open(fileobj=outer.extractfile(m), mode="r:") as inner:
                    per_class[name[:-4]] = [
                        (f"{TRAIN_TAR}/{name}/{im.name.removeprefix('./')}", m.offset_data + im.offset_data, im.size)
                        for im in _members(inner)]
    except tarfile.TarError as e:
        raise LayoutError(f"{path}: cannot read archive: {e}") from None
    if not per_class:
        raise LayoutError(f"{path}: holds no per-class tars (<wnid>.tar)")
    return per_class


def _scan_val(src: Path) -> list[tuple[str, str, int, int]]:
    path = src / VAL_TAR
    try:
        with tarfile.open(path, "r:") as tar:
            return [(m.name.removeprefix("./"), f"{VAL_TAR}/{m.name.removeprefix('./')}",
                     m.offset_data, m.size) for m in _members(tar)]
    except tarfile.TarError as e:
        raise LayoutError(f"{path}: cannot read archive: {e}") from None


def val_labels(folders) -> tuple[dict[str, str], Path] | None:
    """({val image name stem: wnid}, the file they came from) from the first devkit or
    LOC_val_solution.csv found in ``folders``; None when there is neither."""
    for folder in folders:
        if (folder / DEVKIT).exists():
            synsets, val_ids = read_devkit(folder / DEVKIT)
            labels = {}
            for n, ilsvrc_id in enumerate(val_ids, start=1):
                if ilsvrc_id not in synsets:
                    raise LayoutError(f"{folder / DEVKIT}: ground truth line {n} names ILSVRC2012_ID "
                                      f"{ilsvrc_id}, which is not a leaf synset in meta.mat")
                labels[f"ILSVRC2012_val_{n:08d}"] = synsets[ilsvrc_id][0]
            return labels, folder / DEVKIT
        if (folder / LOC_CSV).exists():
            return read_loc_csv(folder / LOC_CSV), folder / LOC_CSV
    return None


def val_key(name: str) -> str:
    """The key an image has in the val labels: ILSVRC2012_val_%08d, else the file's stem."""
    key = VAL_NAME.search(name)
    return key.group(0) if key else Path(name).stem


def _val_labels(src: Path) -> dict[str, str]:
    """{val member name stem: wnid} from the devkit, else LOC_val_solution.csv."""
    found = val_labels([src])
    if found is None:
        raise LayoutError(f"{src / VAL_TAR}: val labels need {DEVKIT} or {LOC_CSV} in {src}")
    return found[0]


def detect(src: Path) -> Layout | None:
    has_train, has_val = (src / TRAIN_TAR).exists(), (src / VAL_TAR).exists()
    if not (has_train or has_val):
        return None
    per_class = _scan_train(src) if has_train else {}
    labels_of = _val_labels(src) if has_val else {}
    if per_class:
        classes = sorted(per_class)
    elif (src / DEVKIT).exists():
        classes = sorted(wnid for wnid, _ in read_devkit(src / DEVKIT)[0].values())
    else:
        classes = sorted(set(labels_of.values()))
    label = {c: i for i, c in enumerate(classes)}
    splits = {}
    if has_train:
        splits["train"] = [Item(source, label[wnid], ("range", TRAIN_TAR, offset, nbytes), nbytes)
                           for wnid in classes for source, offset, nbytes in per_class[wnid]]
    if has_val:
        items = []
        for name, source, offset, nbytes in sorted(_scan_val(src)):
            wnid = labels_of.get(val_key(name))
            if wnid is None:
                raise LayoutError(f"{src / VAL_TAR}: no val label for {name}")
            if wnid not in label:
                raise LayoutError(f"{src / VAL_TAR}: {name} is labelled {wnid}, which is not one "
                                  f"of the {len(classes)} train classes")
            items.append(Item(source, label[wnid], ("range", VAL_TAR, offset, nbytes), nbytes))
        splits["val"] = items
    return Layout("ilsvrc2012-tar", classes, class_names(src, classes), splits)
