"""The converter behind tools/prepare_imagenet.py: plan, convert shards in parallel, finalize.

Determinism and resumption come from one rule: the plan (which input goes to which slot of which
shard) is a pure function of the inputs and the options. Each shard is an independent task whose
output file, and the partial statistics saved beside it in OUT/.work, depend only on the plan;
a task commits by renaming its shard into place. After a crash the same command re-plans, checks
that the plan is the one recorded in .work/job.json, skips committed shards and redoes the rest.
When all shards exist, the partial statistics are summed (exact integers, fixed order) and
stats.npz, skipped.json and finally manifest.json are written; .work is then removed.

Under torchrun (``ranks`` from pipeline.prepare.distributed) the same rules hold across machines:
the ranks first check that they see the same job, rank 0 alone prepares OUT, each rank converts its
share of the shards, and after a barrier rank 0 finalizes. Only where shards are converted differs,
so the bytes are those of a single-process run.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np

from .. import __version__
from .. import format as fmt
from ..errors import UsageError, UserError
from ..fileio import NO_SPACE, atomic_write, fsync_dir, sha256_file
from . import resample, stats
from .distributed import SINGLE, Ranks, host
from .preprocess import PARAMS, DecodeError, encode_jpeg, to_rgb_square
from .sources import Item, LayoutError, detect, read_input
from .stats import Accumulator, npz_bytes
from .writer import ShardWriter

WORK = ".work"


class OutputError(UserError):
    """OUT cannot be written: it holds something else, or the options changed mid-job."""


def plan(items: list[Item], split: str, shard_size: int, seed: int) -> list[list[Item]]:
    """Items in stored order, cut into shards. Train is a seeded permutation (class-mixed
    shards); val keeps the layout's sorted order."""
    if split == "train":
        order = np.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in order]
    return [items[i:i + shard_size] for i in range(0, len(items), shard_size)]


def job_identity(layout, size, encoding, quality, shard_size, seed) -> dict:
    """Everything the output bytes depend on (the worker count is not)."""
    h = hashlib.sha256()
    h.update(json.dumps(layout.classes).encode())
    for split in sorted(layout.splits):
        for item in layout.splits[split]:
            h.update(f"{split}\0{item.source}\0{item.label}\0{item.nbytes}\n".encode())
    return {"format_version": fmt.VERSION, "tool_version": __version__, "layout": layout.name,
            "size": size, "encoding": encoding, "quality": quality if encoding == "jpeg" else None,
            "shard_size": shard_size, "seed": seed, "preprocessing": PARAMS,
            "inputs_sha256": h.hexdigest(),
            "inputs": {s: len(v) for s, v in sorted(layout.splits.items())}}


def inputs_stamp(src: Path, layout) -> str:
    """Size and mtime of every underlying input file (archives, pickles, images). Only for
    resuming: an unfinished job must not mix shards from inputs that were replaced in between.
    Kept out of the manifest, so identical copies of SRC still give identical datasets."""
    files = sorted({item.locator[2] if item.locator[0] == "array" else item.locator[1]
                    for items in layout.splits.values() for item in items})
    h = hashlib.sha256()
    for rel in files:
        st = (src / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _differences(a: dict, b: dict, there: str = "there", here: str = "now") -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} {there} vs {b.get(k)!r} {here}" for k in keys if a.get(k) != b.get(k))


def _check_same_job(ranks: Ranks, identity: dict) -> None:
    """Every rank must see the same inputs and options, or the shares would not fit together:
    stop the whole job, on every rank with the same message, before anything is written."""
    if ranks.world == 1:
        return
    seen = ranks.gather((host(), identity))
    host0, ref = seen[0]
    odd = [f"rank {r} on {h}: {_differences(ref, ident, 'on rank 0', 'here')}"
           for r, (h, ident) in enumerate(seen) if ident != ref]
    if odd:
        raise OutputError(f"the {ranks.world} ranks do not see the same inputs and options (rank 0 is "
                          f"on {host0}): {'; '.join(odd)}. Every rank must read the same SRC (shared "
                          f"storage) and run the same command; nothing was written.")


def _prepare_out(out: Path, identity: dict, stamp) -> bool:
    """Check OUT; return True if the dataset there is already complete and identical.
    ``stamp()`` gives the inputs' stamp, recorded for (and checked on) resumption."""
    manifest, job = out / fmt.MANIFEST, out / WORK / "job.json"
    if manifest.exists():
        try:
            existing = json.loads(manifest.read_text()).get("job", {})
        except (OSError, ValueError) as e:
            raise OutputError(f"{manifest}: unreadable ({e}); not overwriting {out}") from None
        if existing != identity:
            raise OutputError(f"{out} holds a different dataset ({_differences(existing, identity)}); "
                              f"nothing was changed. Choose another OUT or delete it first.")
        # A kill during the final clean-up can leave part of .work (job.json already gone).
        _finish_cleanup(out)
        return True
    if job.exists() and not _valid_job(json.loads(job.read_text())):
        # Options that were never valid converted nothing: start afresh instead of blocking
        # (.work itself stays: it holds our lock).
        job.unlink()
    if job.exists():
        existing = json.loads(job.read_text())
        identity = dict(identity, inputs_stamp=stamp())
        if existing.get("inputs_stamp") != identity["inputs_stamp"] and \
                {k: v for k, v in existing.items() if k != "inputs_stamp"} == \
                {k: v for k, v in identity.items() if k != "inputs_stamp"}:
            raise OutputError(f"{out} holds an unfinished conversion, but input files changed since "
                              f"it started (size or modification time); its finished shards would "
                              f"mix old and new inputs. Delete {out} and convert again.")
        if existing != identity:
            raise OutputError(f"{out} holds an unfinished conversion with other inputs or options "
                              f"({_differences(existing, identity)}); re-run it with its original "
                              f"options, or choose another OUT.")
        return False
    # A kill between creating .work and writing job.json leaves only .work (and maybe a .tmp).
    if out.exists() and any(p.name != WORK for p in out.iterdir()):
        raise OutputError(f"{out} exists, is not empty and holds no dataset of this tool; "
                          f"nothing was changed. Choose an empty or new directory.")
    (out / WORK).mkdir(parents=True, exist_ok=True)
    atomic_write(job, json.dumps(dict(identity, inputs_stamp=stamp()), indent=1, sort_keys=True).encode())
    return False


@contextlib.contextmanager
def _exclusive(out: Path):
    """Refuse at once when another conversion is writing OUT (a POSIX lock on .work/lock, held by
    this process only: forked workers do not inherit it, and a killed job's lock dies with it).
    A complete dataset, or a directory _prepare_out will refuse, is left untouched and unlocked.
    Under torchrun (WORLD_SIZE > 1) every rank writes OUT by design: the ranks coordinate."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or (out / fmt.MANIFEST).exists() or \
            (out.is_dir() and not (out / WORK).exists() and any(out.iterdir())):
        yield
        return
    (out / WORK).mkdir(parents=True, exist_ok=True)
    fd = os.open(out / WORK / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"{out}: another conversion is writing it right now; wait for it to "
                              f"finish (then run this command again), or choose another OUT") from None
        yield
    finally:
        os.close(fd)


def _finish_cleanup(out: Path) -> None:
    shutil.rmtree(out / WORK, ignore_errors=True)


def _partial_path(out: Path, split: str, k: int) -> Path:
    return out / WORK / f"{split}-{k:05d}.npz"


def _is_done(out: Path, split: str, k: int) -> bool:
    return (out / split / fmt.shard_name(k)).exists() and _partial_path(out, split, k).exists()


def _share(shards: dict, ranks: Ranks) -> list[tuple[str, int]]:
    """This rank's (split, shard index) pairs: the job's shards in a fixed order (splits sorted),
    dealt round-robin over the ranks, whatever is already done (so ranks need not agree on that)."""
    order = [(split, k) for split in sorted(shards) for k in range(len(shards[split]))]
    return [sk for i, sk in enumerate(order) if ranks.mine(i)]


def convert_shard(task) -> tuple[str, int, int]:
    """Worker: decode and preprocess one shard's inputs, write its partial stats, commit it."""
    src, out, split, k, items, size, encoding, quality = task
    writer = ShardWriter(out / split / fmt.shard_name(k), len(items), size, encoding)
    acc = Accumulator(size) if split == "train" else None
    skipped, truncated = [], []
    try:
        for item in items:
            notes = []  # what a truncated input lost (it is still converted)
            # Only the input's own faults are skips: it cannot be read (gone, archive cut short,
            # a pickle or IDX file changed under us) or cannot be decoded. Any other exception is
            # a bug in this code and stops the conversion with its traceback, never a "skip".
            try:
                img = to_rgb_square(read_input(src, item.locator), size, notes)  # DecodeError only
            except (LayoutError, OSError, DecodeError) as e:  # read_input: LayoutError, OSError
                reason = str(e) if isinstance(e, (DecodeError, LayoutError)) else f"{type(e).__name__}: {e}"
                skipped.append({"split": split, "source": item.source, "reason": reason})
                continue
            truncated += [{"source": item.source, "missing": note} for note in notes]
            if acc is not None:
                acc.add(img)  # statistics of the stored pixels, before any JPEG re-encoding
            writer.add(encode_jpeg(img, quality) if encoding == "jpeg" else img, item.label, item.source)
        state = acc.state() if acc is not None else {}
        state["skipped"] = _json_array(skipped)
        state["truncated"] = _json_array(truncated)
        state["entry"] = _json_array(writer.finish())
        atomic_write(_partial_path(out, split, k), npz_bytes(state))  # before the shard counts as done
        writer.publish()
    except BaseException:
        writer.abort()
        raise
    return split, k, len(items)


def _json_array(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), np.uint8)


def _worker_init(parent: int):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    # A worker that outlived a SIGKILLed parent would go on and publish its shard by path, over
    # the temporary file of the same shard that the restarted job is writing.
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _run(tasks, workers: int, total: int, done: int, progress: bool):
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
        with ctx.Pool(workers, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            for _, _, n in pool.imap_unordered(convert_shard, tasks):
                bar.update(n)
    finally:
        bar.close()


def _finalize(out: Path, layout, identity: dict, shards: dict) -> dict:
    manifest_splits, skipped = {}, []
    acc = Accumulator(identity["size"])
    for split, chunks in shards.items():
        entries, truncated = [], []
        for k in range(len(chunks)):
            with np.load(_partial_path(out, split, k)) as part:
                skipped += json.loads(part["skipped"].tobytes())
                if "truncated" in part.files:  # absent in partials of earlier versions
                    truncated += json.loads(part["truncated"].tobytes())
                entry = json.loads(part["entry"].tobytes())
                if split == "train":
                    acc.merge(Accumulator.from_state(part))
            entries.append({"file": f"{split}/{fmt.shard_name(k)}", **entry})
        manifest_splits[split] = {"count": sum(e["count"] for e in entries),
                                  "inputs": sum(len(c) for c in chunks),
                                  "skipped": sum(len(c) for c in chunks) - sum(e["count"] for e in entries),
                                  "truncated": truncated, "shards": entries}
    skipped = layout.ignored + skipped
    atomic_write(out / fmt.SKIPPED, json.dumps(skipped, indent=1, ensure_ascii=False).encode())
    for split, info in manifest_splits.items():
        if info["inputs"] and not info["count"]:
            # Training or evaluation would fail hours later: not a dataset, never exit 0.
            raise OutputError(f"{split}: none of its {info['inputs']} inputs could be converted; "
                              f"reasons in {out / fmt.SKIPPED}; the dataset is not complete")
    atomic_write(out / fmt.STATS, npz_bytes(acc.finalize()))
    stats_entry = {"file": fmt.STATS, "bytes": (out / fmt.STATS).stat().st_size,
                   "sha256": sha256_file(out / fmt.STATS)}
    names = layout.class_names or [None] * len(layout.classes)
    manifest = {
        "format": "alexnet-pipeline shards", "version": fmt.VERSION, "tool_version": __version__,
        "size": identity["size"], "encoding": identity["encoding"], "quality": identity["quality"],
        "layout": layout.name,
        "classes": [{"id": c, "name": n} for c, n in zip(layout.classes, names)],
        "splits": manifest_splits, "stats": stats_entry, "skipped_file": fmt.SKIPPED,
        "preprocessing": dict(PARAMS, size=identity["size"]), "job": identity,
    }
    atomic_write(out / fmt.MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    _finish_cleanup(out)
    return manifest


def check_options(size, encoding, quality, shard_size, seed) -> None:
    """UsageError naming the first option that cannot work (the worker count is checked apart:
    it is not part of the job)."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(size) or size < 1:
        raise UsageError(f"--size must be a positive integer, got {size!r}")
    if encoding not in fmt.ENCODINGS:
        raise UsageError(f"--encoding must be one of {sorted(fmt.ENCODINGS)}, got {encoding!r}")
    if not whole(quality) or not 1 <= quality <= 100:
        raise UsageError(f"--quality must be an integer in 1..100, got {quality!r}")
    if not whole(shard_size) or shard_size < 1:
        raise UsageError(f"--shard_size must be a positive integer, got {shard_size!r}")
    if not whole(seed) or seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed!r}")


def _valid_job(job: dict) -> bool:
    """Whether an unfinished job's recorded options could ever have worked (older versions
    claimed OUT before checking them): one that could not has produced nothing to keep."""
    quality = 90 if job.get("quality") is None else job.get("quality")  # None: raw, not used
    try:
        check_options(job.get("size"), job.get("encoding"), quality, job.get("shard_size"), job.get("seed"))
    except UsageError:
        return False
    return True


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
    _check_same_job(ranks, identity)
    try:
        with _exclusive(out):
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
    if _prepare_out(out, identity, lambda: inputs_stamp(src, layout)):
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
    for split, k in _share(shards, ranks):
        chunk = shards[split][k]
        total += len(chunk)
        if _is_done(out, split, k):
            done += len(chunk)
        else:
            tasks.append((src, out, split, k, chunk, size, encoding, quality))
    _run(tasks, min(workers, max(len(tasks), 1)), total, done, progress)
    if ranks.world > 1:
        ranks.barrier()  # every share is done (a rank that died fails this barrier on all ranks)
    if ranks.is_main:
        missing = [f"{split}/{fmt.shard_name(k)}" for split, chunks in shards.items()
                   for k in range(len(chunks)) if not _is_done(out, split, k)]
        if missing:
            raise OutputError(f"{out}: shards {missing[:5]} (of {len(missing)}) are missing after every "
                              f"rank finished its share; run the same command again to redo them")
        for split in shards:  # the shards' renames durable before the manifest calls them complete
            fsync_dir(out / split)
        manifest = _finalize(out, layout, identity, shards)
        report(out, manifest)
    if ranks.world > 1:
        ranks.barrier()  # the manifest is written
    return manifest if ranks.is_main else json.loads((out / fmt.MANIFEST).read_text())


def report(out: Path, manifest: dict) -> None:
    """Summarise on stderr: counts per split, and skipped inputs with their reasons."""
    skipped = json.loads((out / fmt.SKIPPED).read_text())
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['count']} images in {len(info['shards'])} shards"
              f" ({info['skipped']} skipped)", file=sys.stderr)
    truncated = [t for info in manifest["splits"].values() for t in info.get("truncated", ())]
    if truncated:
        print(f"{len(truncated)} inputs end early and were decoded as far as they go (listed under "
              f"\"truncated\" in {out / fmt.MANIFEST}):", file=sys.stderr)
        for t in truncated[:10]:
            print(f"  {t['source']}: {t['missing']}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} inputs not converted (listed in {out / fmt.SKIPPED}):", file=sys.stderr)
        for s in skipped[:10]:
            print(f"  {s['source']}: {s['reason']}", file=sys.stderr)
        if len(skipped) > 10:
            print(f"  ... and {len(skipped) - 10} more", file=sys.stderr)
