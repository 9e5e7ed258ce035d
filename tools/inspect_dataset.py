"""Print a dataset's summary; optionally save a PNG grid of samples.

    python tools/inspect_dataset.py DATASET [--grid=samples.png] [--split=train] [--n=32] [--verify]
"""

from pipeline import open_dataset
from tools.cli import run_cli
from tools.grids import dataset_grid, summary


def main(dataset, grid=None, split="train", n=32, verify=False):
    """Summarise DATASET; --verify re-checks every checksum; --grid writes a PNG of samples."""
    ds = open_dataset(dataset, verify=verify)
    print(summary(ds))
    if verify:
        print("verify    all checksums match")
    if grid:
        dataset_grid(ds, grid, split=split, n=n)
        print(f"grid      {grid}")


if __name__ == "__main__":
    run_cli(main)
