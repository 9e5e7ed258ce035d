"""ImageFolder trees: SRC/train/<class>/... and SRC/val/<class>/... (files at any depth below the
class folder). ImageNet's own folder form (train/<wnid>/*.JPEG) is this layout with wnid classes.

Kaggle's ILSVRC copy is recognised too, from its root (``ILSVRC/Data/CLS-LOC/`` below SRC, with
``LOC_val_solution.csv`` and ``LOC_synset_mapping.txt`` beside ``ILSVRC/``) or from ``CLS-LOC/``
itself: its val folder is flat (``val/*.JPEG``), labelled by the csv (or by a devkit), and class
names come from the mapping file. Any flat val/ is labelled that way when the labels are found.

Every non-hidden file under a class folder is an input: the decoder, not the file name, decides
what is an image (ImageNet has a PNG named .JPEG), and undecodable files are skipped with a reason.
Hidden files (.DS_Store, ._AppleDouble), dangling symlinks, symlink loops and empty class folders
are listed as ignored (skipped.json), never fatal and never silent.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import Item, Layout, LayoutError

SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation")}
KAGGLE_TREE = ("ILSVRC", "Data", "CLS-LOC")


def _split_dir(tree: Path, split: str) -> Path | None:
    for name in SPLIT_DIRS[split]:
        if (tree / name).is_dir():
            return tree / name
    return None


def _roots(src: Path) -> tuple[str, Path, tuple[Path, ...]]:
    """(layout name, the folder holding train/ and val/, folders that may hold labels and names)."""
    if (src.joinpath(*KAGGLE_TREE)).is_dir():
        return "kaggle-ilsvrc", src.joinpath(*KAGGLE_TREE), (src,)
    if len(src.parents) > 2 and tuple(p.name for p in (src.parents[1], src.parent, src)) == KAGGLE_TREE:
        return "kaggle-ilsvrc", src, (src, src.parents[2])
    return "folders", src, (src,)


def _walk(top: Path, src: Path, split: str, ignored: list[dict]) -> list[Path]:
    """Files below ``top``, sorted by path (deterministic across filesystems). Symlinks are
    followed once: a loop back to a folder already on the way down, a dangling link or an
    unreadable folder is listed in ``ignored`` instead."""
    found = []

    def ignore(path: Path, reason: str) -> None:
        ignored.append({"split": split, "source": path.relative_to(src).as_posix(), "reason": reason})

    def visit(folder: Path, seen: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            ignore(folder, f"unreadable folder ({e.strerror})")
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                st = entry.stat()  # follows symlinks
            except OSError as e:
                ignore(path, "dangling symlink (its target does not exist)" if entry.is_symlink()
                       else f"unreadable ({e.strerror})")
                continue
            if entry.is_dir():
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    ignore(path, "symlink loop (links back to a folder above it)")
                else:
                    visit(path, seen | {key})
            else:
                found.append(path)

    # A link to any folder from SRC down to here is a loop (and would relabel other classes).
    above = [top, *(src / p for p in top.relative_to(src).parents)]
    visit(top, frozenset((p.stat().st_dev, p.stat().st_ino) for p in above))
    return sorted(found)


def _flat_labels(d: Path, stray: list[str], meta: tuple[Path, ...], src: Path):
    """{file name: wnid} for the files directly in a flat val/, from LOC_val_solution.csv or a
    devkit in ``meta``; None when neither is there."""
    from .ilsvrc import val_key, val_labels

    found = val_labels(meta)
    if found is None:
        return None
    labels, origin = found
    missing = [name for name in stray if val_key(name) not in labels]
    if missing:
        raise LayoutError(f"{d}: {len(missing)} of {len(stray)} images have no label in {origin} "
                          f"(first: {missing[0]})")
    return {name: labels[val_key(name)] for name in stray}


def detect(src: Path) -> Layout | None:
    name, tree, meta = _roots(src)
    dirs = {split: _split_dir(tree, split) for split in SPLIT_DIRS}
    dirs = {split: d for split, d in dirs.items() if d is not None}
    if not dirs:
        return None
    per_split = {split: sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
                 for split, d in dirs.items()}
    stray = {split: sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
             for split, d in dirs.items()}
    flat = {}  # split -> {file name: wnid}: a flat folder labelled by a csv or devkit
    for split, d in dirs.items():
        if stray[split] and not per_split[split]:
            labels = _flat_labels(d, stray[split], meta, src)
            if labels is not None:
                flat[split] = labels
    classes = sorted(set().union(*per_split.values()))
    if not classes:
        raise LayoutError(f"{src}: {', '.join(str(d) for d in dirs.values())} hold no class folders "
                          f"(expected train/<class>/<image files>)")
    label = {c: i for i, c in enumerate(classes)}
    splits, ignored = {}, []
    for split, d in dirs.items():
        items = []
        for cls in per_split[split]:
            files = _walk(d / cls, src, split, ignored)
            if not files:
                ignored.append({"split": split, "source": (d / cls).relative_to(src).as_posix(),
                                "reason": "empty class folder (no files)"})
            for path in files:
                rel = path.relative_to(src).as_posix()
                if path.name.startswith("."):
                    ignored.append({"split": split, "source": rel, "reason": "hidden file"})
                    continue
                items.append(Item(rel, label[cls], ("file", rel), path.stat().st_size))
        for file_name, wnid in flat.get(split, {}).items():
            rel = (d / file_name).relative_to(src).as_posix()
            if wnid not in label:
                raise LayoutError(f"{d / file_name} is labelled {wnid}, which is not one of the "
                                  f"{len(classes)} train classes")
            items.append(Item(rel, label[wnid], ("file", rel), (d / file_name).stat().st_size))
        if split not in flat:
            for file_name in stray[split]:
                ignored.append({"split": split, "source": (d / file_name).relative_to(src).as_posix(),
                                "reason": "file outside any class folder"})
        if stray[split] and not items:
            raise LayoutError(f"{d}: holds {len(stray[split])} files but no class folders, and no "
                              f"labels for them were found (LOC_val_solution.csv or "
                              f"ILSVRC2012_devkit_t12.tar.gz in {' or '.join(map(str, meta))})")
        splits[split] = items
    from .ilsvrc import class_names  # devkit or LOC_synset_mapping.txt beside the folders
    return Layout(name, classes, class_names(meta[0], classes, meta[1:]), splits, ignored)
