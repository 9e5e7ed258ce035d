"""Print a dataset's summary; optionally save a PNG grid of samples.

    python tools/inspect_dataset.py DATASET [--grid=samples.png] [--split=train] [--n=32] [--verify]
"""

from pipeline.cli import run_cli


def main(dataset: str, grid: str | None = None, split: str = "train", n: int = 32, verify: bool = False,
         cache_dir: str | None = None):
    """Summarise DATASET; --verify re-checks every checksum; --grid writes a PNG of samples.

    dataset: a dataset directory written by tools/prepare_imagenet.py, or its copy in a bucket
        (s3://bucket/prefix: manifest and statistics read from the store)
    grid: write a PNG grid of samples of SPLIT to this file (default: no grid)
    split: the split the grid shows: train or val (whichever the dataset has)
    n: how many samples the grid shows, >= 1
    verify: re-read every shard and check its sha256 against the manifest (reads the whole dataset;
        from a bucket: fetches every shard into the cache, each checked on arrival)
    cache_dir: where a bucket's shards are cached (default ~/.cache/alexnet-pipeline/shards)
    """
    from pipeline import open_dataset
    from pipeline.errors import UsageError
    from tools.grids import dataset_grid, summary

    if n < 1:
        raise UsageError(f"--n must be >= 1, got {n}")
    ds = open_dataset(dataset, verify=verify, cache_dir=cache_dir)
    if split not in ds:
        raise UsageError(f"--split: {ds.root}: no split {split!r}; it has {sorted(ds.splits)}")
    print(summary(ds))
    if verify:
        print("verify    all checksums match")
    if grid:
        dataset_grid(ds, grid, split=split, n=n)
        print(f"grid      {grid}")


if __name__ == "__main__":
    run_cli(main)
