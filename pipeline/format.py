"""The on-disk shard format, declared once: imported by the writer, the reader and the tests.

A dataset directory::

    manifest.json        written last; its presence means the dataset is complete
    stats.npz            train statistics (pixel units 0..255), see pipeline/stats.py
    skipped.json         inputs that could not be decoded, with the reason
    train/00000.shard    shards, SHARD_SUFFIX
    val/00000.shard

A shard (all integers little-endian)::

    offset 0      header        HEADER_DTYPE, 64 bytes
    labels_offset labels        int32[count]
    index_offset  byte offsets  uint64[count + 1], relative to data_offset (jpeg only; 0 for raw)
    data_offset   payload       raw: uint8[count, height, width, 3] (HWC, RGB), page aligned
                                jpeg: concatenated JPEG files
    sources_offset sources      UTF-8 JSON list of each sample's input path relative to SRC

Raw records have a fixed size, so sample i of a shard is
``data[data_offset + i*H*W*3 : data_offset + (i+1)*H*W*3]`` -- numpy alone reads it (README).
"""
from __future__ import annotations

import numpy as np

from .errors import UserError

MAGIC = b"ALXSHRD\x00"
VERSION = 1
SHARD_SUFFIX = ".shard"
MANIFEST = "manifest.json"
STATS = "stats.npz"
# the arrays of stats.npz (pixel units 0..255; README "Looking at a dataset")
STATS_KEYS = ("count", "mean_image", "channel_mean", "channel_std", "cov", "eigval", "eigvec")
SKIPPED = "skipped.json"
PAGE = 4096  # payload alignment: memory-mapped records start on a page

ENCODINGS = {"raw": 0, "jpeg": 1}
ENCODING_NAMES = {v: k for k, v in ENCODINGS.items()}

HEADER_DTYPE = np.dtype([
    ("magic", "S8"),
    ("version", "<u4"),
    ("encoding", "<u4"),
    ("count", "<u4"),
    ("height", "<u4"),
    ("width", "<u4"),
    ("channels", "<u4"),
    ("labels_offset", "<u8"),
    ("index_offset", "<u8"),
    ("data_offset", "<u8"),
    ("sources_offset", "<u8"),
])
HEADER_SIZE = 64
assert HEADER_DTYPE.itemsize <= HEADER_SIZE
LABEL_DTYPE = np.dtype("<i4")
INDEX_DTYPE = np.dtype("<u8")


class FormatError(UserError):
    """A dataset file is missing, truncated, corrupted or from another format version.

    The message always names the file."""


def shard_name(index: int) -> str:
    return f"{index:05d}{SHARD_SUFFIX}"


def align(n: int, to: int = PAGE) -> int:
    return (n + to - 1) // to * to


def layout(capacity: int, encoding: str) -> dict:
    """Byte offsets of the sections before the payload, for a shard of at most ``capacity``
    samples (space is reserved for ``capacity`` so the payload can be streamed before the final
    count, which skipped inputs may lower, is known)."""
    labels_offset = HEADER_SIZE
    index_offset = labels_offset + capacity * LABEL_DTYPE.itemsize
    index_end = index_offset + ((capacity + 1) * INDEX_DTYPE.itemsize if encoding == "jpeg" else 0)
    return dict(labels_offset=labels_offset, index_offset=index_offset if encoding == "jpeg" else 0,
                data_offset=align(index_end))


def pack_header(count: int, size: int, encoding: str, offsets: dict) -> bytes:
    header = np.zeros((), HEADER_DTYPE)
    header["magic"] = MAGIC
    header["version"] = VERSION
    header["encoding"] = ENCODINGS[encoding]
    header["count"] = count
    header["height"] = header["width"] = size
    header["channels"] = 3
    for key, value in offsets.items():
        header[key] = value
    return header.tobytes().ljust(HEADER_SIZE, b"\x00")


def unpack_header(raw: bytes, path) -> np.ndarray:
    """Parse and check a shard header; raise FormatError naming ``path`` if it is not ours."""
    if len(raw) < HEADER_SIZE:
        raise FormatError(f"{path}: truncated shard ({len(raw)} bytes, header needs {HEADER_SIZE})")
    header = np.frombuffer(raw[:HEADER_DTYPE.itemsize], HEADER_DTYPE)[0]
    if header["magic"] != MAGIC.rstrip(b"\x00"):
        raise FormatError(f"{path}: not a shard of this format (magic {bytes(header['magic'])!r}, "
                          f"expected {MAGIC!r})")
    if header["version"] != VERSION:
        raise FormatError(f"{path}: shard format version {int(header['version'])}, this code reads "
                          f"version {VERSION}; re-run tools/prepare_imagenet.py with this version")
    if int(header["encoding"]) not in ENCODING_NAMES:
        raise FormatError(f"{path}: unknown encoding code {int(header['encoding'])}")
    return header
