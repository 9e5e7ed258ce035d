"""`make demo`: the main job on an embedded default, no ImageNet needed.

Generates a small, learnable ImageNet-shaped tree (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG, photo-size
JPEGs), converts it with the real converter, and prints what was written. Outputs go to demo_out/.

    python tools/demo.py [--out=demo_out] [--classes=10] [--train_per_class=40] [--val_per_class=10]
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import open_dataset, synthetic  # noqa: E402
from pipeline.cli import run_cli  # noqa: E402
from pipeline.convert import convert  # noqa: E402
from pipeline.inspect import dataset_grid, summary  # noqa: E402


def main(out="demo_out", classes=10, train_per_class=40, val_per_class=10, workers=None):
    out = Path(out)
    src, data = out / "src", out / "data"
    if not (src / "train").exists():
        t = time.perf_counter()
        synthetic.make_imagefolder(src, classes, train_per_class, val_per_class)
        print(f"generated {src} ({classes} classes) in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    convert(src, data, workers=workers, shard_size=128)
    print(f"converted in {time.perf_counter() - t:.1f} s\n")
    ds = open_dataset(data, verify=True)
    print(summary(ds))
    dataset_grid(ds, out / "samples.png")
    print(f"\nsample grid: {out / 'samples.png'}")


if __name__ == "__main__":
    run_cli(main)
