"""Export one split of a dataset to FFCV's .beton (raw uint8 images + int labels), for side-by-side
loader benchmarks.

    python tools/export_ffcv.py DATASET OUT.beton [--split=train] [--workers=N]

Fields: ``image`` (RGBImageField, raw uint8 HWC, so FFCV reads back exactly our pixels; a
jpeg-encoded dataset is decoded first) and ``label`` (IntField). FFCV is optional
(``make setup-bench``) and imported only here.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline import open_dataset
from tools.cli import run_cli


def require_ffcv():
    """Import ffcv, or raise ImportError saying how to install it."""
    try:
        import ffcv
        import ffcv.fields  # noqa: F401  (needs libturbojpeg and cv2: fails late if either is missing)
        import ffcv.writer  # noqa: F401
    except ImportError as e:
        raise ImportError(f"FFCV is not importable ({e}); run `make setup-bench` to install it "
                          f"(ffcv==1.0.2 and its Debian build packages)") from None
    return ffcv


def export_beton(dataset_path, split: str, out_path, num_workers: int | None = None) -> Path:
    """Write ``split`` of the dataset at ``dataset_path`` to ``out_path`` (.beton); return it."""
    workers = num_workers or os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {num_workers!r}")
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    ds = open_dataset(dataset_path)
    if split not in ds:
        raise ValueError(f"{ds.root}: no split {split!r}; it has {sorted(ds.splits)}")
    samples = ds[split]  # already what DatasetWriter indexes: [i] -> (uint8 (S,S,3), int)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # max_resolution = our size: every image already has it, so FFCV stores it unresized.
    fields = {"image": RGBImageField(write_mode="raw", max_resolution=ds.size), "label": IntField()}
    DatasetWriter(str(out_path), fields, num_workers=workers).from_indexed_dataset(samples)
    return out_path


def main(dataset, out, split="train", workers=None):
    """Write SPLIT of DATASET to OUT (.beton) with WORKERS processes (default: all cores)."""
    print(export_beton(dataset, split, out, num_workers=workers))


if __name__ == "__main__":
    run_cli(main)
