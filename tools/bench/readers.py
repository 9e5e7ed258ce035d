"""How DALI could read our raw shards: a serial external_source callback (per-sample memmap views,
the loader's feed until issue 10) vs DALI's parallel external source (worker processes, shared
memory), into the same graph (random crop, flip, per-channel normalisation, float32 CHW), one
epoch per run, alternating, batch 256, crop 224. The loader now feeds whole batches gathered by
threads into reused buffers (pipeline/load/gather.py); its feed alone is measured by
``tools/benchmark.py loader`` (extras: dali-feed vs numpy-copy).

    python -m tools.bench.readers DATASET        # e.g. the loader benchmark's cached data

A native DALI reader does not apply: none reads fixed-size records at offsets inside our shard
files (readers.numpy wants .npy files). Figures and the reading are in BENCHMARKS.md ("Loader").
"""
import sys
import time

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
import torch
from nvidia.dali import pipeline_def

import pipeline

B, C = 256, 224
DATA = "/tmp/bench_loader_cache/data"  # the command line's DATASET, set when run as a script

class Source:
    """Picklable batch source: each DALI worker process opens the dataset itself."""
    def __init__(self, path, n, batch):
        self.path, self.n, self.batch, self.split = path, n, batch, None
        self.order = np.random.default_rng(0).permutation(n)
    def __call__(self, info):
        if self.split is None:
            self.split = pipeline.open_dataset(self.path)["train"]
        steps = self.n // self.batch
        if info.iteration >= steps:
            raise StopIteration
        idx = self.order[info.iteration * self.batch:(info.iteration + 1) * self.batch]
        located = [self.split.locate(int(i)) for i in idx]
        return [s.payload[j] for s, j in located], [np.array(s.labels[j], np.int32) for s, j in located]

def build(parallel):
    ds = pipeline.open_dataset(DATA)
    n = len(ds["train"])
    mean = ds.stats["channel_mean"].astype(np.float32).tolist()
    std = ds.stats["channel_std"].astype(np.float32).tolist()
    @pipeline_def
    def g():
        imgs, labels = fn.external_source(source=Source(DATA, n, B), num_outputs=2, batch=True, batch_info=True,
                                          parallel=parallel, dtype=[types.UINT8, types.INT32], layout=["HWC", ""])
        out = fn.crop_mirror_normalize(imgs, crop=(C, C), crop_pos_x=fn.random.uniform(range=(0, 1)),
                                       crop_pos_y=fn.random.uniform(range=(0, 1)), mirror=fn.random.coin_flip(),
                                       mean=mean, std=std, dtype=types.FLOAT, output_layout="CHW")
        return out, labels
    kw = dict(py_num_workers=2, py_start_method="fork") if parallel else {}
    p = g(batch_size=B, num_threads=2, device_id=None, prefetch_queue_depth=2, seed=0, **kw)
    p.build()
    return p, n // B

def epoch(parallel):
    p, steps = build(parallel)
    t, k = time.perf_counter(), 0
    try:
        while True:
            out, _ = p.run()
            k += torch.from_dlpack(out.as_tensor()).shape[0]
    except StopIteration:
        pass
    return k / (time.perf_counter() - t)

if __name__ == "__main__":
    DATA = sys.argv[1] if len(sys.argv) > 1 else DATA
    for mode in (False, True, False, True, False, True):  # the first serial epoch warms the page cache
        print("parallel" if mode else "serial  ", f"{epoch(mode):.0f} img/s", flush=True)
