"""Which shards this rank converts, and the pool of forked worker processes that converts them."""
from __future__ import annotations

import multiprocessing
import os
import sys

from . import resample, stats
from .distributed import Ranks
from .worker import convert_shard, worker_init


def share(shards: dict, ranks: Ranks) -> list[tuple[str, int]]:
    """This rank's (split, shard index) pairs: the job's shards in a fixed order (splits sorted),
    dealt round-robin over the ranks, whatever is already done (so ranks need not agree on that)."""
    order = [(split, k) for split in sorted(shards) for k in range(len(shards[split]))]
    return [sk for i, sk in enumerate(order) if ranks.mine(i)]


def run_tasks(tasks, workers: int, total: int, done: int, progress: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="img", disable=not progress, smoothing=0.05,
               file=sys.stderr)
    try:
        if workers == 1:
            for task in tasks:
                bar.update(convert_shard(task)[2])
            return
        resample.warm_up()  # compiled once here, inherited by the forked workers
        stats.warm_up()
        ctx = multiprocessing.get_context("fork")
        stop = ctx.Event()  # set on an error or Ctrl-C: every worker drops its shard and the rest
        with ctx.Pool(workers, initializer=worker_init, initargs=(os.getpid(), stop)) as pool:
            try:
                for _, _, n in pool.imap_unordered(convert_shard, tasks):
                    bar.update(n)
            except BaseException:
                # Let the workers stop themselves (at their next image; their temporary shards
                # removed) and leave, then the pool's own exit. Pool.terminate() alone SIGTERMs
                # them wherever they are, also half-way through sending a result while holding
                # the result queue's lock: the pool's task thread then waits for it forever and
                # the job hangs instead of exiting (1 run in ~20 on a full disk under load).
                stop.set()
                pool.close()
                pool.join()
                raise
    finally:
        bar.close()
