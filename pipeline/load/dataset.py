"""The reader: ``open_dataset(path)`` -> Dataset with .classes, .stats and per-split sequences.

Opening checks every file the manifest lists (present, expected size, header magic, version,
count and geometry); ``verify=True`` also recomputes every checksum. Raw payloads are
memory-mapped, never read into RAM as a whole.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from .. import format as fmt
from ..fileio import sha256_file
from ..store import ShardCache, Store, StoreError, is_url

FormatError = fmt.FormatError


class Shard:
    """One shard file, checked on open and memory-mapped whole, once: labels, index, payload and
    sources all come from that one mapping, so a shard replaced on disk later (a new file renamed
    over it) keeps serving the file that was checked, never new pixels under old labels."""

    def __init__(self, path: Path, entry: dict, size: int, encoding: str, verify: bool):
        self.path = path
        if not path.exists():
            raise FormatError(f"{path}: missing (listed in manifest.json)")
        nbytes = path.stat().st_size
        if nbytes != entry["bytes"]:
            raise FormatError(f"{path}: {nbytes} bytes on disk, manifest.json says {entry['bytes']} "
                              f"(truncated or changed after conversion)")
        self.file = np.memmap(path, np.uint8, "r")
        header = fmt.unpack_header(self.file[:fmt.HEADER_SIZE].tobytes(), path)
        self.count = int(header["count"])
        if self.count != entry["count"]:
            raise FormatError(f"{path}: holds {self.count} samples, manifest.json says {entry['count']}")
        if (int(header["height"]), int(header["width"])) != (size, size) or \
                fmt.ENCODING_NAMES[int(header["encoding"])] != encoding:
            raise FormatError(f"{path}: {int(header['height'])}x{int(header['width'])} "
                              f"{fmt.ENCODING_NAMES[int(header['encoding'])]}, manifest.json says "
                              f"{size}x{size} {encoding}")
        if verify and sha256_file(path) != entry["sha256"]:
            raise FormatError(f"{path}: checksum mismatch (sha256 differs from manifest.json): "
                              f"the file is corrupted")
        self.header, self.size, self.encoding = header, size, encoding
        self.labels = self._section("labels_offset", fmt.LABEL_DTYPE, self.count)
        start, end = int(header["data_offset"]), int(header["sources_offset"])
        payload = self.file[start:end]
        # raw: uint8 (count, S, S, 3); jpeg: the concatenated files, cut by ``offsets``
        self.payload = payload.reshape(self.count, size, size, 3) if encoding == "raw" else payload
        self.offsets = self._section("index_offset", fmt.INDEX_DTYPE, self.count + 1) \
            if encoding == "jpeg" else None

    def _section(self, key: str, dtype: np.dtype, n: int) -> np.ndarray:
        start = int(self.header[key])
        return np.frombuffer(self.file[start:start + n * dtype.itemsize], dtype)

    @cached_property
    def sources(self) -> list[str]:
        return json.loads(self.file[int(self.header["sources_offset"]):].tobytes())

    def encoded_view(self, i: int) -> np.ndarray:
        """Sample i's JPEG file as a view of the mapping (no copy)."""
        return np.asarray(self.payload[int(self.offsets[i]):int(self.offsets[i + 1])])

    def encoded(self, i: int) -> bytes:
        return self.encoded_view(i).tobytes()

    def image(self, i: int) -> np.ndarray:
        if self.encoding == "raw":
            return np.asarray(self.payload[i])
        return decode_jpeg(self.encoded(i))


class Split(Sequence):
    """A split as a sequence: ``split[i] -> (uint8 (S,S,3) array, int label)``."""

    def __init__(self, root: Path, name: str, info: dict, size: int, encoding: str, verify: bool,
                 remote=None):
        self.name, self.size, self.encoding = name, size, encoding
        self.entries = info["shards"]
        self.cache = remote.cache if remote else None  # the node-local shard cache of a store
        self.shards = remote.shards(name, info, size, encoding, verify) if remote else \
            [Shard(root / e["file"], e, size, encoding, verify) for e in info["shards"]]
        # the global index of each shard's first sample, then the total
        self.starts = np.cumsum([0] + [s.count for s in self.shards], dtype=np.int64)
        self.labels = np.concatenate([s.labels for s in self.shards]) if self.shards else \
            np.zeros(0, fmt.LABEL_DTYPE)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def remote(self) -> bool:
        """Shards fetched from an object store into the cache on demand (pipeline/store.py)."""
        return self.cache is not None

    def locate(self, i: int) -> tuple[Shard, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: index {i} out of range for {len(self)} samples")
        k, j = self.locate_many(np.array([i % len(self)]))
        return self.shards[int(k[0])], int(j[0])

    def locate_many(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, row in that shard) of every index in ``idx`` (0 <= idx < len), in one
        vectorised search over the shards' first indices."""
        k = np.searchsorted(self.starts, idx, side="right") - 1
        return k, idx - self.starts[k]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        shard, j = self.locate(i)
        return shard.image(j), int(shard.labels[j])

    def source(self, i: int) -> str:
        shard, j = self.locate(i)
        return shard.sources[j]


class Dataset:
    def __init__(self, root, verify: bool = False, cache_dir=None, cache_limit=None):
        remote = None
        if is_url(root):  # an object store: manifest and stats read from it, shards via the cache
            remote = _Remote(str(root), cache_dir, cache_limit)
            self.root = root = remote.root
            path = root / fmt.MANIFEST
            raw = remote.manifest_bytes()
        else:
            self.root = root = Path(root)
            path = root / fmt.MANIFEST
            if not path.exists():
                hint = (" (an unfinished conversion: re-run tools/prepare_imagenet.py to finish it)"
                        if (root / ".work").exists() else "")
                raise FormatError(f"{path}: missing; {root} is not a dataset{hint}")
            raw = None
        self.remote = remote
        try:
            raw = path.read_bytes() if raw is None else raw
            # the file's own bytes: what names the dataset's content (trainer/config.py)
            self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
            self.manifest = json.loads(raw)
        except (OSError, ValueError) as e:
            raise FormatError(f"{path}: unreadable ({e})") from None
        if not isinstance(self.manifest, dict):
            raise FormatError(f"{path}: valid JSON but not a manifest (a {type(self.manifest).__name__}, "
                              f"expected an object)")
        if self.manifest.get("version") != fmt.VERSION:
            raise FormatError(f"{path}: dataset format version {self.manifest.get('version')!r}, this "
                              f"code reads version {fmt.VERSION}; re-convert with this version")
        m = self.manifest
        try:
            self.size, self.encoding = m["size"], m["encoding"]
            self.classes = [c["id"] for c in m["classes"]]
            self.class_names = [c["name"] or c["id"] for c in m["classes"]]
            if remote:
                remote.check_listing(m)
            self.splits = {name: Split(root, name, info, self.size, self.encoding, verify, remote)
                           for name, info in m["splits"].items()}
            for split in self.splits.values():
                _check_labels(split, len(self.classes))
            self.stats = remote.stats(m["stats"]) if remote else \
                _load_stats(root / m["stats"]["file"], m["stats"], verify)
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            # A manifest edited by hand or written by something else: name it, not a deep KeyError.
            raise FormatError(f"{path}: not the manifest this tool writes (wrong shape: "
                              f"{type(e).__name__}: {e})") from None

    def read_text(self, name: str) -> str:
        """A small file of the dataset directory (skipped.json, ...), local or in the store."""
        return self.remote.store.read(name).decode() if self.remote else (self.root / name).read_text()

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"{self.root}: no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]

    def __contains__(self, split: str) -> bool:
        return split in self.splits

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"Dataset({str(self.root)!r}, {self.size}px {self.encoding}, {len(self.classes)} classes, {counts})"


def _check_labels(split: Split, n_classes: int) -> None:
    """Labels are in memory after open: one out of range (a flipped byte) would otherwise crash
    training hours later inside the loss, naming no file."""
    for shard in split.shards:
        bad = np.flatnonzero((shard.labels < 0) | (shard.labels >= n_classes))
        if len(bad):
            raise FormatError(f"{shard.path}: sample {bad[0]} has label {shard.labels[bad[0]]}, "
                              f"outside the {n_classes} classes of manifest.json (the shard is "
                              f"corrupted)")


def _load_stats(path: Path, entry: dict, verify: bool) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FormatError(f"{path}: missing (listed in manifest.json)")
    if path.stat().st_size != entry["bytes"]:
        raise FormatError(f"{path}: {path.stat().st_size} bytes on disk, manifest.json says "
                          f"{entry['bytes']} (truncated or changed after conversion)")
    if verify and sha256_file(path) != entry["sha256"]:
        raise FormatError(f"{path}: checksum mismatch (sha256 differs from manifest.json): corrupted")
    return _parse_stats(path, path)


def _parse_stats(path, source) -> dict[str, np.ndarray]:
    """stats.npz from ``source`` (a path or a file object); errors name ``path``."""
    try:
        with np.load(source) as z:
            stats = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise FormatError(f"{path}: unreadable, corrupted ({type(e).__name__}: {e})") from None
    missing = set(fmt.STATS_KEYS) - set(stats)
    if missing:
        raise FormatError(f"{path}: lacks {sorted(missing)}")
    return stats


def decode_jpeg(data: bytes) -> np.ndarray:
    """A jpeg-encoded sample's payload -> uint8 (S, S, 3) RGB (DALI decodes it in the loader)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def open_dataset(path, verify: bool = False, cache_dir=None, cache_limit=None) -> Dataset:
    """A dataset directory, or an fsspec URL of one (``s3://bucket/prefix``): then manifest.json
    and stats.npz are read from the store and shards fetched into ``cache_dir`` as they are needed
    (at most ``cache_limit`` bytes there: an int, or a size such as "64G"). A Dataset is returned
    as it is."""
    if isinstance(path, Dataset):
        return path
    return Dataset(path, verify=verify, cache_dir=cache_dir, cache_limit=cache_limit)


class _URLPath:
    """A URL that reads as a path in messages and joins like one: ``root / "manifest.json"``."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def __truediv__(self, name) -> "_URLPath":
        return _URLPath(f"{self.url}/{name}")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return repr(self.url)

    def exists(self) -> bool:
        return True


class RemoteShard:
    """A shard of a dataset in an object store: count and labels known from the start (one ranged
    read of its header and labels), pixels mapped from the node-local cache when first needed.
    ``unmap()`` drops this process's mapping (the cache evicted the file); the next use fetches it
    again."""

    def __init__(self, cache, url: str, entry: dict, size: int, encoding: str, header, labels):
        self.cache, self.path, self.entry = cache, url, entry
        self.size, self.encoding, self.header = size, encoding, header
        self.count, self.labels = int(header["count"]), labels
        self._shard, self._lock = None, threading.Lock()
        self.on_unmap = []  # callbacks: the gatherer's mapping of this shard goes too

    @property
    def mapped(self) -> bool:
        return self._shard is not None

    def local(self) -> Shard:
        shard = self._shard
        if shard is not None:
            return shard
        with self._lock:
            if self._shard is None:
                for attempt in (1, 2):
                    path = self.cache.get(self.entry)
                    try:
                        self._shard = Shard(path, self.entry, self.size, self.encoding, verify=False)
                        break
                    except FormatError:
                        if path.exists() or attempt == 2:
                            raise  # a damaged cached file: named by Shard
                        # evicted by another process of the node between fetch and open: again
            return self._shard

    def unmap(self) -> None:
        with self._lock:
            self._shard = None
        for callback in self.on_unmap:
            callback()

    payload = property(lambda self: self.local().payload)
    offsets = property(lambda self: self.local().offsets)
    sources = property(lambda self: self.local().sources)

    def encoded_view(self, i: int) -> np.ndarray:
        return self.local().encoded_view(i)

    def encoded(self, i: int) -> bytes:
        return self.local().encoded(i)

    def image(self, i: int) -> np.ndarray:
        return self.local().image(i)


class _Remote:
    """The store side of a Dataset opened from a URL."""

    def __init__(self, url: str, cache_dir, cache_limit):
        self.store = Store(url)
        self.root = _URLPath(self.store.url)
        self.cache = ShardCache.for_store(self.store, cache_dir, cache_limit)

    def manifest_bytes(self) -> bytes:
        try:
            return self.store.read(fmt.MANIFEST)
        except StoreError as e:
            if "no such object" in str(e):
                raise FormatError(f"{self.root / fmt.MANIFEST}: missing; {self.root} is not a dataset "
                                  f"(upload the converted directory, manifest.json included)") from None
            raise

    def check_listing(self, m: dict) -> None:
        """Every object manifest.json lists exists in the store with its size: before step 1."""
        sizes = self.store.sizes()
        entries = [e for info in m["splits"].values() for e in info["shards"]] + [m["stats"]]
        for e in entries:
            got = sizes.get(e["file"])
            if got is None:
                raise FormatError(f"{self.root / e['file']}: missing in the store (listed in manifest.json)")
            if got != e["bytes"]:
                raise FormatError(f"{self.root / e['file']}: {got} bytes in the store, manifest.json "
                                  f"says {e['bytes']} (truncated or changed after conversion)")

    def shards(self, name: str, info: dict, size: int, encoding: str, verify: bool) -> list:
        """The split's shards, each header and label section read with one ranged request (on
        a few threads); ``verify`` fetches every shard now (its sha256 is checked on arrival)."""
        entries = info["shards"]

        def head(e):
            n = e["count"]
            raw = self.store.read_range(e["file"], 0, fmt.HEADER_SIZE + n * fmt.LABEL_DTYPE.itemsize)
            url = str(self.root / e["file"])
            header = fmt.unpack_header(raw[:fmt.HEADER_SIZE], url)
            start = int(header["labels_offset"])
            if start != fmt.HEADER_SIZE:
                raw = self.store.read_range(e["file"], 0, start + n * fmt.LABEL_DTYPE.itemsize)
            labels = np.frombuffer(raw[start:start + n * fmt.LABEL_DTYPE.itemsize], fmt.LABEL_DTYPE)
            if int(header["count"]) != n or len(labels) != n:
                raise FormatError(f"{url}: holds {int(header['count'])} samples, manifest.json says {n}")
            return RemoteShard(self.cache, url, e, size, encoding, header, labels)

        with ThreadPoolExecutor(16) as pool:
            shards = list(pool.map(head, entries))
        if verify:
            for future in [self.cache.fetch(e) for e in entries]:
                future.result()
        return shards

    def stats(self, entry: dict) -> dict[str, np.ndarray]:
        raw = self.store.read(entry["file"])
        path = self.root / entry["file"]
        if len(raw) != entry["bytes"] or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise FormatError(f"{path}: checksum mismatch (sha256 differs from manifest.json): corrupted")
        return _parse_stats(path, io.BytesIO(raw))
