"""Files that are either whole or absent: atomic writes, directory fsync, checksums.

Shared by the converter (shards, statistics, manifest) and the trainer (checkpoints): write to a
temporary name, fsync, rename over the final name, fsync the directory, so a kill or a power loss
at any point leaves the old file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, BinaryIO

# A write failed because the disk (or quota, or the file-size limit) ran out: fixable by the user.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def naming(path):
    """Put ``path`` into OSErrors raised by writes (a failed write on a file object names no file)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def atomic_write(path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` (bytes, or a function that writes to the open file) to ``path`` atomically.

    The temporary name is fixed (``path`` + ``.tmp``): a partial file left by a kill is overwritten
    by the next write instead of piling up (a checkpoint is as large as the model)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with naming(tmp), open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. the disk filled up: leave no partial file behind
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)
