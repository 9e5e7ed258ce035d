"""The conversion job's identity and OUT's state: what the output bytes depend on, the plan (which
input goes to which slot of which shard), and the check of OUT before anything is written (a
finished identical dataset, an unfinished job to resume, or something else to refuse). The
recorded job lives in OUT/.work/job.json until the manifest is written."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from .. import __version__
from .. import format as fmt
from ..errors import UsageError, UserError
from ..fileio import atomic_write
from .distributed import Ranks, host
from .preprocess import PARAMS
from .sources import Item

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


def differences(a: dict, b: dict, there: str = "there", here: str = "now") -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} {there} vs {b.get(k)!r} {here}" for k in keys if a.get(k) != b.get(k))


def check_same_job(ranks: Ranks, identity: dict) -> None:
    """Every rank must see the same inputs and options, or the shares would not fit together:
    stop the whole job, on every rank with the same message, before anything is written."""
    if ranks.world == 1:
        return
    seen = ranks.gather((host(), identity))
    host0, ref = seen[0]
    odd = [f"rank {r} on {h}: {differences(ref, ident, 'on rank 0', 'here')}"
           for r, (h, ident) in enumerate(seen) if ident != ref]
    if odd:
        raise OutputError(f"the {ranks.world} ranks do not see the same inputs and options (rank 0 is "
                          f"on {host0}): {'; '.join(odd)}. Every rank must read the same SRC (shared "
                          f"storage) and run the same command; nothing was written.")


def prepare_out(out: Path, identity: dict, stamp) -> bool:
    """Check OUT; return True if the dataset there is already complete and identical.
    ``stamp()`` gives the inputs' stamp, recorded for (and checked on) resumption."""
    manifest, job = out / fmt.MANIFEST, out / WORK / "job.json"
    if manifest.exists():
        try:
            existing = json.loads(manifest.read_text()).get("job", {})
        except (OSError, ValueError) as e:
            raise OutputError(f"{manifest}: unreadable ({e}); not overwriting {out}") from None
        if existing != identity:
            raise OutputError(f"{out} holds a different dataset ({differences(existing, identity)}); "
                              f"nothing was changed. Choose another OUT or delete it first.")
        # A kill during the final clean-up can leave part of .work (job.json already gone).
        finish_cleanup(out)
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
                              f"({differences(existing, identity)}); re-run it with its original "
                              f"options, or choose another OUT.")
        return False
    # A kill between creating .work and writing job.json leaves only .work (and maybe a .tmp).
    if out.exists() and any(p.name != WORK for p in out.iterdir()):
        raise OutputError(f"{out} exists, is not empty and holds no dataset of this tool; "
                          f"nothing was changed. Choose an empty or new directory.")
    (out / WORK).mkdir(parents=True, exist_ok=True)
    atomic_write(job, json.dumps(dict(identity, inputs_stamp=stamp()), indent=1, sort_keys=True).encode())
    return False


def finish_cleanup(out: Path) -> None:
    shutil.rmtree(out / WORK, ignore_errors=True)


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
