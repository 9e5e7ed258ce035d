"""Export one split of a dataset to FFCV's .beton (raw uint8 images + int labels).

    python tools/export_ffcv.py DATASET OUT.beton [--split=train] [--workers=N]

Needs FFCV (make setup-bench).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import run_cli  # noqa: E402
from pipeline.export_ffcv import export_beton  # noqa: E402


def main(dataset, out, split="train", workers=None):
    """Write SPLIT of DATASET to OUT (.beton) with WORKERS processes (default: all cores)."""
    print(export_beton(dataset, split, out, num_workers=workers))


if __name__ == "__main__":
    run_cli(main)
