"""The converter behind tools/prepare_imagenet.py: plan, convert shards in parallel, finalize.

Determinism and resumption come from one rule: the plan (which input goes to which slot of which
shard) is a pure function of the inputs and the options. Each shard is an independent task whose
output file, and the partial statistics saved beside it in OUT/.work, depend only on the plan;
a task commits by renaming its shard into place. After a crash the same command re-plans, checks
that the plan is the one recorded in .work/job.json, skips committed shards and redoes the rest.
When all shards exist, the partial statistics are summed (exact integers, fixed order) and
stats.npz, skipped.json and finally manifest.json are written; .work is then removed.
"""
from __future__ import annotations

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
from ..fileio import NO_SPACE, atomic_write, fsync_dir, sha256_file
from .preprocess import PARAMS, DecodeError, encode_jpeg, to_rgb_square
from .sources import Item, LayoutError, detect, read_input
from .stats import Accumulator, npz_bytes
from .writer import ShardWriter

WORK = ".work"


class OutputError(Exception):
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


def _differences(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} there vs {b.get(k)!r} now" for k in keys if a.get(k) != b.get(k))


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


def _finish_cleanup(out: Path) -> None:
    shutil.rmtree(out / WORK, ignore_errors=True)


def _partial_path(out: Path, split: str, k: int) -> Path:
    return out / WORK / f"{split}-{k:05d}.npz"


def _is_done(out: Path, split: str, k: int) -> bool:
    return (out / split / fmt.shard_name(k)).exists() and _partial_path(out, split, k).exists()


def convert_shard(task) -> tuple[str, int, int]:
    """Worker: decode and preprocess one shard's inputs, write its partial stats, commit it."""
    src, out, split, k, items, size, encoding, quality = task
    writer = ShardWriter(out / split / fmt.shard_name(k), len(items), size, encoding)
    acc = Accumulator(size) if split == "train" else None
    skipped = []
    try:
        for item in items:
            # Only the input's own faults are skips: it cannot be read (gone, archive cut short,
            # a pickle or IDX file changed under us) or cannot be decoded. Any other exception is
            # a bug in this code and stops the conversion with its traceback, never a "skip".
            try:
                img = to_rgb_square(read_input(src, item.locator), size)  # raises DecodeError only
            except (LayoutError, OSError, DecodeError) as e:  # read_input: LayoutError, OSError
                reason = str(e) if isinstance(e, (DecodeError, LayoutError)) else f"{type(e).__name__}: {e}"
                skipped.append({"split": split, "source": item.source, "reason": reason})
                continue
            if acc is not None:
                acc.add(img)  # statistics of the stored pixels, before any JPEG re-encoding
            writer.add(encode_jpeg(img, quality) if encoding == "jpeg" else img, item.label, item.source)
        state = acc.state() if acc is not None else {}
        state["skipped"] = _json_array(skipped)
        state["entry"] = _json_array(writer.finish())
        atomic_write(_partial_path(out, split, k), npz_bytes(state))  # before the shard counts as done
        writer.publish()
    except BaseException:
        writer.abort()
        raise
    return split, k, len(items)


def _json_array(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), np.uint8)


def _worker_init():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool


def _run(tasks, workers: int, total: int, done: int, progress: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="img", disable=not progress, smoothing=0.05,
               file=sys.stderr)
    try:
        if workers == 1:
            for task in tasks:
                bar.update(convert_shard(task)[2])
            return
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            for _, _, n in pool.imap_unordered(convert_shard, tasks):
                bar.update(n)
    finally:
        bar.close()


def _finalize(out: Path, layout, identity: dict, shards: dict) -> dict:
    manifest_splits, skipped = {}, []
    acc = Accumulator(identity["size"])
    for split, chunks in shards.items():
        entries = []
        for k in range(len(chunks)):
            with np.load(_partial_path(out, split, k)) as part:
                skipped += json.loads(part["skipped"].tobytes())
                entry = json.loads(part["entry"].tobytes())
                if split == "train":
                    acc.merge(Accumulator.from_state(part))
            entries.append({"file": f"{split}/{fmt.shard_name(k)}", **entry})
        manifest_splits[split] = {"count": sum(e["count"] for e in entries),
                                  "inputs": sum(len(c) for c in chunks),
                                  "skipped": sum(len(c) for c in chunks) - sum(e["count"] for e in entries),
                                  "shards": entries}
    skipped = layout.ignored + skipped
    atomic_write(out / fmt.SKIPPED, json.dumps(skipped, indent=1, ensure_ascii=False).encode())
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


def convert(src, out, size: int = 256, encoding: str = "raw", quality: int = 90,
            workers: int | None = None, shard_size: int = 1024, seed: int = 0,
            progress: bool = True) -> dict:
    """Convert SRC into a dataset at OUT (resuming an interrupted run); return the manifest."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"--size must be a positive integer, got {size!r}")
    if encoding not in fmt.ENCODINGS:
        raise ValueError(f"--encoding must be one of {sorted(fmt.ENCODINGS)}, got {encoding!r}")
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"--quality must be an integer in 1..100, got {quality!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard_size must be a positive integer, got {shard_size!r}")
    workers = workers or os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {workers!r}")
    src, out = Path(src).resolve(), Path(out).resolve()
    layout = detect(src)
    if "train" not in layout.splits:
        raise OutputError(f"{src}: no train split found (statistics come from train)")
    identity = job_identity(layout, size, encoding, quality, shard_size, seed)
    try:
        return _convert(src, out, layout, identity, workers, progress)
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        raise OutputError(f"{e.filename}: {e.strerror}: out of space (disk, quota or file-size "
                          f"limit); finished shards are kept: free some space and run the same "
                          f"command again to resume") from None


def _convert(src: Path, out: Path, layout, identity: dict, workers: int, progress: bool) -> dict:
    size, encoding, quality = identity["size"], identity["encoding"], identity["quality"]
    shard_size, seed = identity["shard_size"], identity["seed"]
    if _prepare_out(out, identity, lambda: inputs_stamp(src, layout)):
        print(f"{out}: already complete, nothing to do", file=sys.stderr)
        return json.loads((out / fmt.MANIFEST).read_text())
    shards = {split: plan(items, split, shard_size, seed) for split, items in layout.splits.items()}
    tasks, done = [], 0
    for split, chunks in shards.items():
        (out / split).mkdir(exist_ok=True)
        for stale in (out / split).glob("*.tmp"):
            stale.unlink()
        for k, chunk in enumerate(chunks):
            if _is_done(out, split, k):
                done += len(chunk)
            else:
                tasks.append((src, out, split, k, chunk, size, encoding, quality))
    fsync_dir(out)
    total = sum(len(c) for chunks in shards.values() for c in chunks)
    _run(tasks, min(workers, max(len(tasks), 1)), total, done, progress)
    for split in shards:  # the shards' renames durable before the manifest calls them complete
        fsync_dir(out / split)
    manifest = _finalize(out, layout, identity, shards)
    report(out, manifest)
    return manifest


def report(out: Path, manifest: dict) -> None:
    """Summarise on stderr: counts per split, and skipped inputs with their reasons."""
    skipped = json.loads((out / fmt.SKIPPED).read_text())
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['count']} images in {len(info['shards'])} shards"
              f" ({info['skipped']} skipped)", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} inputs not converted (listed in {out / fmt.SKIPPED}):", file=sys.stderr)
        for s in skipped[:10]:
            print(f"  {s['source']}: {s['reason']}", file=sys.stderr)
        if len(skipped) > 10:
            print(f"  ... and {len(skipped) - 10} more", file=sys.stderr)
