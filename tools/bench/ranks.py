"""The loader under torchrun: images/s of every rank's loader, each its own data-parallel share,
with the default thread count or a given one (the "before" of issue 22: one thread, what
torch.get_num_threads() gave under torchrun's OMP_NUM_THREADS=1).

    torchrun --standalone --nproc_per_node=2 tools/bench/ranks.py --data=DATA [--num_threads=0]
        [--batch_size=128] [--crop=224] [--seconds=20] [--device=cpu]

Each rank times whole batches for about --seconds after two warm-up batches; rank 0 prints one
JSON line: the threads each rank used and the ranks' summed images/s.
"""
from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist

from pipeline.cli import run_cli


def main(data: str, num_threads: int = 0, batch_size: int = 128, crop: int = 224,
         seconds: float = 20.0, device: str = "cpu"):
    """Time every rank's loader under torchrun.

    data: a dataset from tools/prepare_imagenet.py
    num_threads: loader threads per rank (0: the loader's default)
    batch_size: images per batch on each rank
    crop: random crop side
    seconds: timed seconds per rank, after two warm-up batches
    device: cpu | cuda
    """
    import pipeline
    from pipeline.load.loader import default_threads

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    loader = pipeline.build_loader(data, "train", batch_size=batch_size, crop=crop, device=device,
                                   dp_rank=rank, dp_size=world, num_threads=num_threads or None)
    n, epoch, t0 = 0, 0, None
    while t0 is None or time.perf_counter() - t0 < seconds:
        loader.set_epoch(epoch)
        for k, (x, _) in enumerate(loader):
            if t0 is None and k == 1:
                t0, n = time.perf_counter(), 0  # two warm-up batches
            elif t0 is not None:
                n += len(x)
                if time.perf_counter() - t0 >= seconds:
                    break
        epoch += 1
    rate = torch.tensor([n / (time.perf_counter() - t0)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(rate)
    if rank == 0:
        print(json.dumps({"ranks": world, "threads_per_rank": loader.num_threads,
                          "default": default_threads()[1] if not num_threads else None,
                          "torch_threads": torch.get_num_threads(), "batch_size": batch_size,
                          "crop": crop, "images_per_s": round(rate.item(), 1)}))
    loader.close()
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
