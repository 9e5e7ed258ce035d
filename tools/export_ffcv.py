"""Export one split of a dataset to FFCV's .beton (images + int labels), for side-by-side loader
benchmarks.

    python tools/export_ffcv.py DATASET OUT.beton [--split=train] [--workers=N] [--write_mode=raw|jpg] [--quality=90]

Fields: ``image`` (RGBImageField) and ``label`` (IntField). ``write_mode="raw"`` (default) stores
uint8 HWC, so FFCV reads back exactly our pixels (a jpeg-encoded dataset is decoded first);
``"jpg"`` is FFCV's JPEG mode: our pixels encoded by FFCV's writer (OpenCV's libjpeg) at
``quality``, to compare with our ``--encoding=jpeg`` shards of the same pixels and quality. FFCV is
optional (``make setup-bench``) and imported only here.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline import open_dataset
from pipeline.errors import MissingDependencyError, UsageError
from pipeline.cli import run_cli


def require_ffcv():
    """Import ffcv, or raise MissingDependencyError (an ImportError) saying how to install it."""
    try:
        import ffcv
        import ffcv.fields  # noqa: F401  (needs libturbojpeg and cv2: fails late if either is missing)
        import ffcv.writer  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"FFCV is not importable ({e}); run `make setup-bench` to install it "
                          f"(ffcv==1.0.2 and its Debian build packages)") from None
    return ffcv


def export_beton(dataset_path, split: str, out_path, num_workers: int | None = None,
                 overwrite: bool = False, write_mode: str = "raw", quality: int = 90) -> Path:
    """Write ``split`` of the dataset at ``dataset_path`` to ``out_path`` (.beton); return it.
    An existing ``out_path`` is replaced only with ``overwrite``; everything is checked first."""
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise UsageError(f"--workers must be a positive integer, got {num_workers!r}")
    if write_mode not in ("raw", "jpg"):
        raise UsageError(f"--write_mode must be raw or jpg, got {write_mode!r}")
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise UsageError(f"--quality must be an integer in 1..100, got {quality!r}")
    workers = num_workers or os.cpu_count() or 1
    out_path = Path(out_path)
    if out_path.is_dir():
        raise UsageError(f"{out_path}: is a directory; OUT is the .beton file to write")
    if out_path.exists() and not overwrite:
        raise UsageError(f"{out_path}: exists; pass --overwrite to replace it")
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    ds = open_dataset(dataset_path)
    if split not in ds:
        raise UsageError(f"--split: {ds.root}: no split {split!r}; it has {sorted(ds.splits)}")
    samples = ds[split]  # already what DatasetWriter indexes: [i] -> (uint8 (S,S,3), int)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # max_resolution = our size: every image already has it, so FFCV stores it unresized.
    image = RGBImageField(write_mode=write_mode, max_resolution=ds.size, jpeg_quality=quality)
    fields = {"image": image, "label": IntField()}
    DatasetWriter(str(out_path), fields, num_workers=workers).from_indexed_dataset(samples)
    return out_path


def main(dataset: str, out: str, split: str = "train", workers: int | None = None,
         overwrite: bool = False, write_mode: str = "raw", quality: int = 90):
    """Write SPLIT of DATASET to OUT (.beton) with WORKERS processes.

    dataset: a dataset directory written by tools/prepare_imagenet.py
    out: the .beton file to write (its folder is created; an existing file needs --overwrite)
    split: the split to export: train or val (whichever the dataset has)
    workers: FFCV writer processes, >= 1 (default: the number of cores)
    overwrite: replace OUT if it exists (default: refuse)
    write_mode: raw (our pixels, exactly) or jpg (FFCV's JPEG mode, encoded at QUALITY)
    quality: JPEG quality of write_mode=jpg, 1..100
    """
    print(export_beton(dataset, split, out, num_workers=workers, overwrite=overwrite,
                       write_mode=write_mode, quality=quality))


if __name__ == "__main__":
    run_cli(main)
