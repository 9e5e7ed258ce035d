"""The worker: one shard's inputs read, preprocessed and written, its partial statistics saved
beside it in OUT/.work, then the shard committed by rename (pipeline/prepare/writer.py)."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from .. import format as fmt
from ..fileio import atomic_write
from .job import WORK
from .preprocess import DecodeError, encode_jpeg, to_rgb_square
from .sources import LayoutError, read_input
from .stats import Accumulator, npz_bytes
from .writer import ShardWriter


def partial_path(out: Path, split: str, k: int) -> Path:
    return out / WORK / f"{split}-{k:05d}.npz"


def is_done(out: Path, split: str, k: int) -> bool:
    return (out / split / fmt.shard_name(k)).exists() and partial_path(out, split, k).exists()


def convert_shard(task) -> tuple[str, int, int]:
    """Worker: decode and preprocess one shard's inputs, write its partial stats, commit it."""
    src, out, split, k, items, size, encoding, quality = task
    writer = ShardWriter(out / split / fmt.shard_name(k), len(items), size, encoding)
    acc = Accumulator(size) if split == "train" else None
    skipped, truncated = [], []
    try:
        for item in items:
            if _stop is not None and _stop.is_set():
                raise Stopped(f"{split} shard {k}: the job is stopping")
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
        atomic_write(partial_path(out, split, k), npz_bytes(state))  # before the shard counts as done
        writer.publish()
    except BaseException:
        writer.abort()
        raise
    return split, k, len(items)


def _json_array(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), np.uint8)


class Stopped(Exception):
    """A worker's shard given up because the job stops (an error elsewhere, or Ctrl-C)."""


_stop = None  # the pool's stop event, in a worker process


def worker_init(parent: int, stop=None):
    global _stop
    _stop = stop  # set by the parent when the job stops: the worker gives up its shard
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    # A worker that outlived a SIGKILLed parent would go on and publish its shard by path, over
    # the temporary file of the same shard that the restarted job is writing.
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)
