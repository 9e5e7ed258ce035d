"""`make demo`: the whole chain on an embedded default, no ImageNet needed, <= 10 minutes on 2 cores.

1. data: Fashion-MNIST when Debian's dataset-fashion-mnist is installed (real photographs of
   clothing), else a generated, learnable ImageNet-shaped tree (train/<wnid>/*.JPEG, photo-size);
2. convert it with tools/prepare_imagenet.py (the real converter);
3. train AlexNet's two-tower graph (alexnet_small) under torchrun with mp=2 on the CPU, so the
   model-parallel path runs, and evaluate one-crop and ten-crop;
4. run the quick benchmarks;
5. print where everything is: the run directory with curves.png, a grid of augmented training
   samples, the benchmark tables.

    python tools/demo.py [--out=demo_out] [--steps=0]
"""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from pipeline import open_dataset
from pipeline.errors import UsageError
from tools import synthetic
from pipeline.cli import run_cli
from tools.grids import augmented_grid, summary

FASHION = Path("/usr/share/datasets/fashion-mnist")


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main(out: str = "demo_out", steps: int = 0):
    """The whole chain on an embedded default: data, convert, train (torchrun, mp=2), benchmarks.

    out: folder for everything the demo writes (data, run directory, benchmark tables)
    steps: cap on the training steps, for a quicker look; 0 trains the config's epochs
    """
    if steps < 0:
        raise UsageError(f"--steps must be >= 0, got {steps}")
    out = Path(out).resolve()
    py = sys.executable
    t0 = step("data")
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        src, size, crop, epochs, name = FASHION, 32, 28, 1, "fashion-mnist"
        note = "Fashion-MNIST (real data, installed by Debian's dataset-fashion-mnist)"
    else:
        src, size, crop, epochs, name = out / "src", 64, 56, 4, "generated"
        note = "a generated ImageNet-shaped tree (install dataset-fashion-mnist for real data)"
        if not (src / "train").exists():
            synthetic.make_imagefolder(src, n_classes=10, train_per_class=120, val_per_class=30,
                                       sizes=((160, 120), (120, 160), (200, 150), (128, 128)))
    print(f"using {note}: {src}")
    # One directory per embedded default: installing the real data later does not collide.
    data, run_dir = out / f"data-{name}-{size}", out / f"run-{name}"

    t = step("convert")
    run([py, "tools/prepare_imagenet.py", str(src), str(data), f"--size={size}", "--shard_size=4096"])
    ds = open_dataset(data, verify=True)
    print(summary(ds))
    print(f"({time.perf_counter() - t:.0f} s)")

    t = step("train: torchrun, 2 processes, mp=2 (AlexNet's two towers on a pair of ranks)")
    overrides = [f"--crop={crop}", f"--epochs={epochs}"] + ([f"--max_steps={steps}"] if steps else [])
    run([py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "trainer/main.py",
         "--config=configs/demo.yaml", f"--data={data}", f"--out={run_dir}", *overrides])
    print(f"({time.perf_counter() - t:.0f} s)")

    t = step("augmented samples")
    grid = out / "augmented.png"
    augmented_grid(data, grid, crop=crop, lighting=0.5)
    print(f"stored image | what the train loader made of it (crop, flip, PCA lighting at std 0.5, "
          f"5x the recipes' 0.1, each image's alpha on the picture): {grid}")

    t = step("quick benchmarks")
    bench = out / "bench"
    for sub, args in (("prepare", []), ("loader", [f"--data={data}", f"--crop={crop}"]),
                      ("model", ["--model=alexnet_small", f"--crop={crop}"])):
        run([py, "tools/benchmark.py", sub, "--quick", f"--json={bench / (sub + '.json')}", *args])
    print(f"({time.perf_counter() - t:.0f} s)")

    print(f"\n== done in {time.perf_counter() - t0:.0f} s")
    print(f"dataset           {data}")
    print(f"run directory     {run_dir}  (metrics.jsonl, curves.png, checkpoints/, tb/)")
    print(f"training curves   {run_dir / 'curves.png'}")
    print(f"augmented samples {grid}")
    print(f"benchmarks        {bench}/*.json and *.png (tables above)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_cli(main)
