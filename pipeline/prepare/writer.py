"""Writes one shard: payloads streamed to a temporary file, header last, then fsync and rename.

A shard at its final name is therefore always complete; an interrupted conversion leaves only
``*.tmp`` files, which the next run deletes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import format as fmt
from ..fileio import naming, sha256_file

class ShardWriter:
    """``add`` samples (uint8 HxWx3 arrays for raw, JPEG bytes for jpeg), ``finish``, ``publish``."""

    def __init__(self, path, capacity: int, size: int, encoding: str):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.capacity, self.size, self.encoding = capacity, size, encoding
        self.offsets = fmt.layout(capacity, encoding)
        self.labels, self.sources, self.ends = [], [], [0]
        self.file = open(self.tmp, "wb")
        self.file.seek(self.offsets["data_offset"])

    def add(self, payload, label: int, source: str) -> None:
        if len(self.labels) == self.capacity:
            raise ValueError(f"{self.path}: shard is full ({self.capacity} samples)")
        if self.encoding == "raw":
            assert payload.shape == (self.size, self.size, 3) and payload.dtype == np.uint8
            payload = memoryview(np.ascontiguousarray(payload)).cast("B")
        with naming(self.tmp):
            self.file.write(payload)
        self.ends.append(self.ends[-1] + len(payload))
        self.labels.append(label)
        self.sources.append(source)

    def finish(self) -> dict:
        """Complete the temporary file (header last, fsync); return its manifest entry."""
        with naming(self.tmp):
            return self._finish()

    def _finish(self) -> dict:
        f, count = self.file, len(self.labels)
        sources_offset = self.offsets["data_offset"] + self.ends[-1]
        f.write(json.dumps(self.sources, ensure_ascii=False).encode())
        f.seek(self.offsets["labels_offset"])
        f.write(np.asarray(self.labels, fmt.LABEL_DTYPE).tobytes())
        if self.encoding == "jpeg":
            f.seek(self.offsets["index_offset"])
            f.write(np.asarray(self.ends, fmt.INDEX_DTYPE).tobytes())
        f.seek(0)
        f.write(fmt.pack_header(count, self.size, self.encoding,
                                dict(self.offsets, sources_offset=sources_offset)))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        return {"count": count, "bytes": self.tmp.stat().st_size, "sha256": sha256_file(self.tmp)}

    def publish(self) -> None:
        """Rename the finished shard into place: from here on it counts as written."""
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.file.close()  # flushes the buffer: fails again when the disk is full
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)
