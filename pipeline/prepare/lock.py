"""One conversion at a time per OUT: a POSIX lock on OUT/.work/lock."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .. import format as fmt
from .job import WORK, OutputError


@contextlib.contextmanager
def exclusive(out: Path):
    """Refuse at once when another conversion is writing OUT (a POSIX lock on .work/lock, held by
    this process only: forked workers do not inherit it, and a killed job's lock dies with it).
    A complete dataset, or a directory prepare_out will refuse, is left untouched and unlocked.
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
