"""Convert ImageNet (ILSVRC-2012 tars or folders), any ImageFolder tree, IDX (MNIST, Fashion-MNIST)
or CIFAR pickles into sharded SIZE x SIZE data (256 for ImageNet).

    python tools/prepare_imagenet.py SRC OUT [--size=256] [--encoding=raw|jpeg] [--quality=90]
        [--workers=N] [--shard_size=1024] [--seed=0]

Resumable: after Ctrl-C or a kill, run the same command again. See README.md for the layouts.
Across machines: run it under torchrun (README.md, "Converting on several machines").
"""

from pipeline.prepare.convert import convert
from pipeline.prepare.distributed import torchrun_ranks
from tools.cli import run_cli


def main(src, out, size=256, encoding="raw", quality=90, workers=None, shard_size=1024, seed=0):
    """Convert SRC to the dataset directory OUT (see README.md)."""
    with torchrun_ranks() as ranks:
        convert(src, out, size=size, encoding=encoding, quality=quality, workers=workers,
                shard_size=shard_size, seed=seed, ranks=ranks)
    print(out)


if __name__ == "__main__":
    run_cli(main)
