"""ImageFolder trees: SRC/train/<class>/... and SRC/val/<class>/... (files at any depth below the
class folder). ImageNet's own folder form (train/<wnid>/*.JPEG) is this layout with wnid classes.

Every non-hidden file under a class folder is an input: the decoder, not the file name, decides
what is an image (ImageNet has a PNG named .JPEG), and undecodable files are skipped with a reason.
Hidden files (.DS_Store, ._AppleDouble) are listed as ignored.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import Item, Layout, LayoutError

SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation")}


def _split_dir(src: Path, split: str) -> Path | None:
    for name in SPLIT_DIRS[split]:
        if (src / name).is_dir():
            return src / name
    return None


def _walk(class_dir: Path):
    """Files below class_dir, sorted by relative path (deterministic across filesystems)."""
    found = []
    for root, dirs, files in os.walk(class_dir, followlinks=True):
        dirs.sort()
        for name in files:
            found.append(Path(root) / name)
    return sorted(found)


def detect(src: Path) -> Layout | None:
    dirs = {split: _split_dir(src, split) for split in SPLIT_DIRS}
    dirs = {split: d for split, d in dirs.items() if d is not None}
    if not dirs:
        return None
    per_split = {split: sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
                 for split, d in dirs.items()}
    classes = sorted(set().union(*per_split.values()))
    if not classes:
        raise LayoutError(f"{src}: {', '.join(str(d) for d in dirs.values())} hold no class folders "
                          f"(expected train/<class>/<image files>)")
    label = {c: i for i, c in enumerate(classes)}
    splits, ignored = {}, []
    for split, d in dirs.items():
        items = []
        for cls in per_split[split]:
            for path in _walk(d / cls):
                rel = path.relative_to(src).as_posix()
                if path.name.startswith("."):
                    ignored.append({"split": split, "source": rel, "reason": "hidden file"})
                    continue
                items.append(Item(rel, label[cls], ("file", rel), path.stat().st_size))
        stray = sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
        for name in stray:
            ignored.append({"split": split, "source": f"{d.name}/{name}",
                            "reason": "file outside any class folder"})
        splits[split] = items
    from .ilsvrc import class_names  # devkit or LOC_synset_mapping.txt beside the folders
    return Layout("folders", classes, class_names(src, classes), splits, ignored)
