"""Convert ImageNet (ILSVRC-2012 tars, Kaggle's ILSVRC folders or ImageNet folders), any
ImageFolder tree, IDX (MNIST, Fashion-MNIST) or CIFAR pickles into sharded SIZE x SIZE data
(256 for ImageNet).

    python tools/prepare_imagenet.py SRC OUT [--size=256] [--encoding=raw|jpeg] [--quality=90]
        [--workers=N] [--shard_size=1024] [--seed=0]

Every option is checked before anything is read or written (--help lists them). Resumable: after
Ctrl-C or a kill, run the same command again. See README.md for the layouts.
Across machines: run it under torchrun (README.md, "Converting on several machines").
"""

from pipeline.cli import run_cli


def main(src: str, out: str, size: int = 256, encoding: str = "raw", quality: int = 90,
         workers: int | None = None, shard_size: int = 1024, seed: int = 0):
    """Convert SRC to the dataset directory OUT (see README.md "Converting a dataset").

    src: the source folder: ILSVRC-2012 tars, Kaggle's ILSVRC/ tree, train/<class>/ folders, IDX
        or CIFAR files (the layout is recognised from its contents)
    out: the dataset directory to write: new, empty, or an unfinished conversion of the same
        command to resume
    size: side of the stored square images in pixels (shorter side resized to it, centre crop)
    encoding: raw (uint8 pixels, O(1) access, ~197 KB an image at 256) or jpeg (~8x smaller,
        decoded by the loader)
    quality: JPEG quality 1..100 (encoding=jpeg only)
    workers: processes converting shards in parallel, >= 1 (default: the number of cores)
    shard_size: images per shard file
    seed: seed of the stored train order (a seeded shuffle), >= 0
    """
    from pipeline.prepare.convert import convert  # after the command line is checked: fails fast
    from pipeline.prepare.distributed import torchrun_ranks

    with torchrun_ranks() as ranks:
        convert(src, out, size=size, encoding=encoding, quality=quality, workers=workers,
                shard_size=shard_size, seed=seed, ranks=ranks)
    print(out)


if __name__ == "__main__":
    run_cli(main)
