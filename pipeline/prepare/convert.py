"""The converter behind tools/prepare_imagenet.py: plan, convert shards in parallel, finalize.

Determinism and resumption come from one rule: the plan (which input goes to which slot of which
shard) is a pure function of the inputs and the options. Each shard is an independent task whose
output file, and the partial statistics saved beside it in OUT/.work, depend only on the plan;
a task commits by renaming its shard into place. After a crash the same command re-plans, checks
that the plan is the one recorded in .work/job.json, skips committed shards and redoes the rest.
When all shards exist, the partial statistics are summed (exact integers, fixed order) and
stats.npz, skipped.json and finally manifest.json are written; .work is then removed.

The parts: job.py (identity, plan, OUT's state), lock.py (one conversion per OUT), worker.py (one
shard), pool.py (this rank's shards over worker processes), finalize.py (statistics, manifest,
report); this module runs them in order.

Under torchrun (``ranks`` from pipeline.prepare.distributed) the same rules hold across machines:
the ranks first check that they see the same job, rank 0 alone prepares OUT, each rank converts its
share of the shards, and after a barrier rank 0 finalizes. Only where shards are converted differs,
so the bytes are those of a single-process run.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .. import format as fmt
from ..errors import UsageError
from ..fileio import NO_SPACE, fsync_dir
from .distributed import SINGLE, Ranks
from .finalize import finalize, report
from .job import OutputError, check_options, check_same_job, inputs_stamp, job_identity, plan, prepare_out
from .lock import exclusive
from .pool import run_tasks, share
from .sources import detect
from .worker import is_done


def convert(src, out, size: int = 256, encoding: str = "raw", quality: int = 90,
            workers: int | None = None, shard_size: int = 1024, seed: int = 0,
            progress: bool = True, ranks: Ranks = SINGLE) -> dict:
    """Convert SRC into a dataset at OUT (resuming an interrupted run); return the manifest.
    Every option is checked before SRC is scanned or OUT touched. ``ranks``: this process's place
    in a torchrun job (``distributed.torchrun_ranks()``); every rank calls convert with the same
    arguments and ``workers`` processes of its own."""
    check_options(size, encoding, quality, shard_size, seed)
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UsageError(f"--workers must be a positive integer (default: all cores), got {workers!r}")
    if Path(out).exists() and not Path(out).is_dir():
        raise OutputError(f"{out}: exists and is a file; OUT is the dataset directory to write")
    src, out = Path(src).resolve(), Path(out).resolve()
    layout = detect(src)
    if "train" not in layout.splits:
        raise OutputError(f"{src}: no train split found (statistics come from train)")
    identity = job_identity(layout, size, encoding, quality, shard_size, seed)
    check_same_job(ranks, identity)
    try:
        with exclusive(out):
            return _convert(src, out, layout, identity, workers, progress, ranks)
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        raise OutputError(f"{e.filename}: {e.strerror}: out of space (disk, quota or file-size "
                          f"limit); finished shards are kept: free some space and run the same "
                          f"command again to resume") from None


def _prepare(src: Path, out: Path, layout, identity: dict, splits) -> bool:
    """Rank 0, before any rank writes: check OUT (True: already complete), create the split
    folders and delete temporaries left by a killed run."""
    if prepare_out(out, identity, lambda: inputs_stamp(src, layout)):
        return True
    for split in splits:
        (out / split).mkdir(exist_ok=True)
        for stale in (out / split).glob("*.tmp"):
            stale.unlink()
    fsync_dir(out)
    return False


def _convert(src: Path, out: Path, layout, identity: dict, workers: int, progress: bool,
             ranks: Ranks) -> dict:
    size, encoding, quality = identity["size"], identity["encoding"], identity["quality"]
    shard_size, seed = identity["shard_size"], identity["seed"]
    shards = {split: plan(items, split, shard_size, seed) for split, items in layout.splits.items()}
    if ranks.world == 1:
        complete = _prepare(src, out, layout, identity, shards)
    else:
        # A refusal (OUT holds something else, cannot be written...) travels to every rank, which
        # all stop with it instead of waiting for rank 0 until the rendezvous times out.
        error = None
        try:
            outcome = _prepare(src, out, layout, identity, shards) if ranks.is_main else None
        except (OutputError, OSError) as e:
            error, outcome = e, f"{e}" if isinstance(e, OutputError) else f"{type(e).__name__}: {e}"
        outcome = ranks.broadcast(outcome)
        if error is not None:
            raise error
        if isinstance(outcome, str):
            raise OutputError(f"rank 0 stopped: {outcome}")
        complete = outcome
    if complete:
        if ranks.is_main:
            print(f"{out}: already complete, nothing to do", file=sys.stderr)
        return json.loads((out / fmt.MANIFEST).read_text())
    tasks, done, total = [], 0, 0
    for split, k in share(shards, ranks):
        chunk = shards[split][k]
        total += len(chunk)
        if is_done(out, split, k):
            done += len(chunk)
        else:
            tasks.append((src, out, split, k, chunk, size, encoding, quality))
    run_tasks(tasks, min(workers, max(len(tasks), 1)), total, done, progress)
    if ranks.world > 1:
        ranks.barrier()  # every share is done (a rank that died fails this barrier on all ranks)
    if ranks.is_main:
        missing = [f"{split}/{fmt.shard_name(k)}" for split, chunks in shards.items()
                   for k in range(len(chunks)) if not is_done(out, split, k)]
        if missing:
            raise OutputError(f"{out}: shards {missing[:5]} (of {len(missing)}) are missing after every "
                              f"rank finished its share; run the same command again to redo them")
        for split in shards:  # the shards' renames durable before the manifest calls them complete
            fsync_dir(out / split)
        manifest = finalize(out, layout, identity, shards)
        report(out, manifest)
    if ranks.world > 1:
        ranks.barrier()  # the manifest is written
    return manifest if ranks.is_main else json.loads((out / fmt.MANIFEST).read_text())
