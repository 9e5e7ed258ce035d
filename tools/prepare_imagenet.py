"""Convert ImageNet (ILSVRC-2012 tars or folders), any ImageFolder tree, IDX (MNIST, Fashion-MNIST)
or CIFAR pickles into sharded SIZE x SIZE data (256 for ImageNet).

    python tools/prepare_imagenet.py SRC OUT [--size=256] [--encoding=raw|jpeg] [--quality=90]
        [--workers=N] [--shard_size=1024] [--seed=0]

Resumable: after Ctrl-C or a kill, run the same command again. See README.md for the layouts.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import run_cli  # noqa: E402
from pipeline.convert import convert  # noqa: E402


def main(src, out, size=256, encoding="raw", quality=90, workers=None, shard_size=1024, seed=0):
    """Convert SRC to the dataset directory OUT (see README.md)."""
    convert(src, out, size=size, encoding=encoding, quality=quality, workers=workers,
            shard_size=shard_size, seed=seed)
    print(out)


if __name__ == "__main__":
    run_cli(main)
