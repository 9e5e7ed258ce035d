"""Datasets in object storage: ``s3://bucket/prefix`` (or any fsspec URL) read through a node-local,
verified shard cache.

    store = Store("s3://bucket/imagenet256")          # manifest.json, stats.npz: read from the store
    cache = ShardCache.for_store(store, cache_dir, cache_limit)
    path = cache.get(entry)                           # the shard, fetched once, checked, on local disk

The library is fsspec (s3fs for s3://, gcsfs for gs://, ...): endpoint and credentials come from
the standard variables and files (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``~/.aws/credentials``), so any S3-compatible store works. No protocol is written here.

The cache holds shards under their sha256 (content-addressed: a re-converted dataset never serves a
stale file, and datasets sharing shards share them). A shard is downloaded to a temporary name,
its sha256 computed on the way and compared with manifest.json's, and renamed into place only when
it matches (a crash leaves no half file under a final name); a mismatch is fetched once more, then
an error names the object. The processes of one node share the cache: a shard is fetched under an
exclusive ``flock`` on its lock file, and whoever gets the lock second finds the file and downloads
nothing (one download per shard per node). Eviction unlinks a file: a process that has it mapped
keeps reading the mapping (Linux frees the blocks when the last mapping goes).

What is fetched ahead and what may be evicted is decided by the loader (pipeline/load/prefetch.py):
this module only fetches, verifies, counts and evicts what it is told is not protected.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .errors import UserError
from .fileio import NO_SPACE

RETRIES = 4          # attempts per request before an error names the object
BACKOFF = 0.5        # seconds before the second attempt, doubled after each failure
FETCH_THREADS = 8    # shards downloaded at once by one process (S3 throughput grows with parallel streams)


class StoreError(UserError):
    """The object store cannot serve the dataset (credentials, bucket, object, network) or the
    cache cannot hold it: the message names the URL or the directory and what to do."""


def is_url(path) -> bool:
    """An fsspec URL (s3://, gs://, ...), not a local path. file:// counts as local."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alexnet-pipeline" / "shards"


_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgtp]?)(i?b?)\s*$", re.I)


def parse_bytes(value) -> int | None:
    """None / 0 -> None (no limit); an int -> bytes; '64G', '1.5TB', '500MiB' (powers of 1024)."""
    if value in (None, 0, "", "0"):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise StoreError(f"cache_limit: {value!r} is not a size (bytes, or e.g. 64G, 500MiB)")
    return int(float(m.group(1)) * 1024 ** " kmgtp".index(m.group(2).lower() or " "))


def human(n: int) -> str:
    """Bytes for messages: 1.50 GiB, 200.0 MiB, 95.1 KiB, 12 B."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.{2 if unit in ('TiB', 'GiB') else 1}f} {unit}"
    return f"{n} B"


def _fs_options(protocol: str) -> dict:
    if protocol in ("s3", "s3a"):
        # Bounded: a store that stops answering is an error after RETRIES attempts of ours, not a
        # hang inside botocore's own retry loop.
        return {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                  "retries": {"max_attempts": 2, "mode": "standard"}}}
    return {}


def _permanent(e: BaseException) -> bool:
    """Errors retrying cannot fix: a missing object or bucket, refused credentials."""
    name = type(e).__name__
    return isinstance(e, (FileNotFoundError, PermissionError)) or name in (
        "NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "InvalidConfigError")


def _explain(url: str, e: BaseException) -> str:
    name, text = type(e).__name__, str(e)
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (f"{url}: no credentials for the store (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                f"AWS_PROFILE or ~/.aws/credentials)")
    if isinstance(e, PermissionError) or "AccessDenied" in text or "Forbidden" in text or \
            "SignatureDoesNotMatch" in text or "InvalidAccessKeyId" in text:
        return (f"{url}: access refused by the store ({text or name}): check the credentials "
                f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE) and the bucket's policy")
    if isinstance(e, FileNotFoundError) and "bucket" in text.lower():
        return f"{url}: unknown bucket ({text})"
    if isinstance(e, FileNotFoundError):
        return f"{url}: no such object in the store"
    return f"{url}: the store did not answer ({name}: {text})"


class Store:
    """A dataset directory in an object store: ``read(name)``, ``sizes()``, ``download(name, dest)``,
    each with bounded retries and backoff, each error naming the object's URL."""

    def __init__(self, url: str, retries: int = RETRIES, backoff: float = BACKOFF):
        import fsspec

        self.url = str(url).rstrip("/")
        self.retries, self.backoff = retries, backoff
        protocol = self.url.split("://", 1)[0]
        try:
            # a new filesystem object: fsspec's instance cache would keep the credentials and
            # endpoint of an earlier one
            self.fs, self.root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True,
                                                       **_fs_options(protocol))
        except (ImportError, ValueError) as e:
            raise StoreError(f"{self.url}: no filesystem for {protocol}:// ({e}); for s3:// install "
                             f"s3fs, for gs:// gcsfs") from None
        self.root = self.root.rstrip("/")

    def object_url(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _call(self, name: str, fn, *args, **kwargs):
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except StoreError:
                raise
            except OSError as e:
                if e.errno in NO_SPACE or e.filename is not None:
                    raise  # the local disk (full, unwritable): the cache names it, no retry
                last = e
            except (TypeError, AttributeError, NameError, AssertionError):
                raise  # a bug (ours or a library's API), not the store: keep the traceback
            except Exception as e:  # noqa: BLE001 - botocore/aiohttp errors are not OSErrors
                last = e
            if _permanent(last) or attempt == self.retries:
                break
            time.sleep(delay)
            delay *= 2
        tries = "" if _permanent(last) else f" (after {self.retries} attempts)"
        raise StoreError(_explain(self.object_url(name), last) + tries) from None

    def read(self, name: str) -> bytes:
        return self._call(name, self.fs.cat_file, f"{self.root}/{name}")

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """{name relative to the dataset: bytes} of every object under ``prefix`` (one listing)."""
        path = f"{self.root}/{prefix}".rstrip("/")
        found = self._call(prefix or "", self.fs.find, path, detail=True)
        return {k[len(self.root) + 1:]: int(v.get("size") or 0) for k, v in found.items()}

    def read_range(self, name: str, start: int, end: int) -> bytes:
        return self._call(name, self.fs.cat_file, f"{self.root}/{name}", start=start, end=end)

    def download(self, name: str, dest: Path, size: int | None = None, chunk: int = 8 << 20) -> str:
        """Stream the object into ``dest`` (created or truncated) in ``chunk``-byte ranged reads;
        its sha256. ``size`` (known from the manifest) spares the HEAD request; an object of at
        most one chunk is one GET."""
        path = f"{self.root}/{name}"

        def once():
            h = hashlib.sha256()
            with open(dest, "wb") as out:
                if size is not None and size <= chunk:
                    block = self.fs.cat_file(path)
                    h.update(block)
                    out.write(block)
                    return h.hexdigest()
                opts = {"size": size} if size is not None else {}
                with self.fs.open(path, "rb", block_size=chunk, **opts) as src:
                    while block := src.read(chunk):
                        h.update(block)
                        out.write(block)
            return h.hexdigest()
        return self._call(name, once)


class ShardCache:
    """Verified shards of one store in a node-local directory, fetched on a few threads.

    ``get(entry)`` blocks until the shard is on disk (fetching it if no one has); ``fetch(entry)``
    starts it in the background; ``evict(protected)`` removes files no plan protects, least
    recently used first, until the limit holds. Counters: bytes fetched, shards refetched (fetched
    again after an eviction), seconds waited in ``get``."""

    _instances: dict = {}
    _instances_lock = threading.Lock()

    @classmethod
    def for_store(cls, store: Store, cache_dir=None, cache_limit=None) -> "ShardCache":
        """One cache object per (store, directory) in a process: the loaders of one dataset share it."""
        cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        key = (store.url, os.path.abspath(cache_dir))
        with cls._instances_lock:
            cache = cls._instances.get(key)
            if cache is None or cache.closed:
                cache = cls._instances[key] = cls(store, cache_dir, cache_limit)
            elif parse_bytes(cache_limit) != cache.limit:
                cache.limit = parse_bytes(cache_limit)
            return cache

    def __init__(self, store: Store, cache_dir, cache_limit=None, threads: int = FETCH_THREADS):
        self.store, self.dir, self.limit = store, Path(cache_dir), parse_bytes(cache_limit)
        self.locks = self.dir / ".locks"
        try:
            self.locks.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"cache_dir {self.dir}: not writable ({e.strerror or e}); pass a "
                             f"writable cache_dir") from None
        self._clean_temporaries()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="fetch")
        # re-entrant: a fetch that ends at once runs its done-callback (which takes it) inside fetch()
        self.lock = threading.RLock()
        self.room = threading.Lock()  # eviction decisions, one at a time
        self.reserved = 0             # bytes of the downloads in progress
        self.pending: dict[str, Future] = {}
        self.protected: dict[int, set] = {}   # plan id -> sha256s it needs now or ahead
        self.fetched: dict[str, int] = {}     # sha256 -> times this process downloaded it
        self.bytes_fetched = self.bytes_refetched = 0
        self.waited = 0.0
        self.closed = False

    # -- where and whether -----------------------------------------------------------------------
    def path(self, entry: dict) -> Path:
        return self.dir / entry["sha256"]

    def present(self, entry: dict) -> bool:
        return self.path(entry).exists()

    def _files(self) -> list[tuple[float, str, int]]:
        """(last access, name, bytes) of the cached shards (files evicted meanwhile left out)."""
        files = []
        with os.scandir(self.dir) as it:
            for e in it:
                if not e.name.startswith("."):
                    try:
                        st = e.stat()
                    except FileNotFoundError:
                        continue  # evicted by another thread or process of the node meanwhile
                    files.append((st.st_atime, e.name, st.st_size))
        return files

    def used_bytes(self) -> int:
        return sum(f[2] for f in self._files())

    def check_space(self, need: int, what: str) -> None:
        """Before step 1: the disk can hold ``need`` bytes of shards beside what is cached."""
        free = shutil.disk_usage(self.dir).free + self.used_bytes()
        if free < need:
            raise StoreError(f"cache_dir {self.dir}: {human(free)} free (counting what it "
                             f"caches), {what} needs {human(need)}: free space, move "
                             f"cache_dir or lower cache_limit")

    # -- fetching ----------------------------------------------------------------------------------
    def fetch(self, entry: dict) -> Future:
        """Start fetching ``entry`` (a manifest shard entry: file, bytes, sha256) unless it is
        present or on its way; the future's result is its path."""
        sha = entry["sha256"]
        with self.lock:
            future = self.pending.get(sha)
            if future is None:
                if self.present(entry):
                    future = Future()
                    future.set_result(self.path(entry))
                    return future
                future = self.pending[sha] = self.pool.submit(self._fetch, entry)
                future.add_done_callback(lambda _f, s=sha: self._done(s))
            return future

    def _done(self, sha: str) -> None:
        with self.lock:
            self.pending.pop(sha, None)

    def get(self, entry: dict) -> Path:
        """The shard's path once it is on disk and verified (fetched now if need be)."""
        if self.present(entry):
            return self.path(entry)
        t = time.perf_counter()
        path = self.fetch(entry).result()
        self.waited += time.perf_counter() - t
        return path

    def _fetch(self, entry: dict) -> Path:
        final = self.path(entry)
        with open(self.locks / f"{entry['sha256']}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process of this node may be fetching it
            try:
                if final.exists():
                    return final  # fetched by another process while this one waited
                self._make_room(entry["bytes"], keep=entry["sha256"])
                tmp = final.with_name(f".{final.name}.tmp.{os.getpid()}.{threading.get_ident()}")
                try:
                    for attempt in (1, 2):
                        try:
                            digest = self.store.download(entry["file"], tmp, entry["bytes"])
                        except OSError as e:
                            if e.errno in NO_SPACE:
                                raise StoreError(f"cache_dir {self.dir}: out of space while fetching "
                                                 f"{self.store.object_url(entry['file'])} "
                                                 f"({human(entry['bytes'])}): free space or "
                                                 f"lower cache_limit") from None
                            raise StoreError(f"cache_dir {self.dir}: cannot write {e.filename} "
                                             f"({e.strerror or e}) while fetching "
                                             f"{self.store.object_url(entry['file'])}") from None
                        size = tmp.stat().st_size
                        if digest == entry["sha256"] and size == entry["bytes"]:
                            break
                        if attempt == 2:
                            raise StoreError(
                                f"{self.store.object_url(entry['file'])}: its bytes differ from manifest.json "
                                f"(sha256 {digest[:12]}..., {size} bytes; manifest: {entry['sha256'][:12]}..., "
                                f"{entry['bytes']} bytes), fetched twice: the object was changed or "
                                f"corrupted after conversion")
                    os.rename(tmp, final)
                finally:
                    tmp.unlink(missing_ok=True)
                    with self.room:
                        self.reserved -= entry["bytes"]
                with self.lock:
                    n = self.fetched.get(entry["sha256"], 0)
                    self.fetched[entry["sha256"]] = n + 1
                    self.bytes_fetched += entry["bytes"]
                    if n:
                        self.bytes_refetched += entry["bytes"]
                return final
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- eviction ----------------------------------------------------------------------------------
    def protect(self, plan: int, shas: set) -> None:
        """What plan ``plan`` needs now or ahead: never evicted while it says so."""
        with self.lock:
            self.protected[plan] = set(shas)

    def release(self, plan: int) -> None:
        with self.lock:
            self.protected.pop(plan, None)

    def _make_room(self, incoming: int, keep: str) -> None:
        """Unlink unprotected shards, least recently used first, until ``incoming`` more bytes fit
        under the limit beside the downloads in progress, and reserve them. A limit that only
        protected shards fill is let through (the loader refuses such a limit at its start)."""
        with self.room:
            self.reserved += incoming
            if self.limit is None:
                return
            with self.lock:
                protected = set().union(*self.protected.values()) | {keep} | set(self.pending)
            files = self._files()
            used = sum(f[2] for f in files) + self.reserved - incoming
            self._evict(files, used, incoming, protected)

    def _evict(self, files, used: int, incoming: int, protected: set) -> None:
        for _, name, size in sorted(files):
            if used + incoming <= self.limit:
                break
            if name in protected:
                continue
            try:
                os.unlink(self.dir / name)
                used -= size
            except FileNotFoundError:
                used -= size  # another process of the node evicted it first

    def stats(self) -> dict:
        return {"bytes_fetched": self.bytes_fetched, "bytes_refetched": self.bytes_refetched,
                "shards_fetched": sum(self.fetched.values()), "waited_s": round(self.waited, 3)}

    def _clean_temporaries(self) -> None:
        """Partial downloads of processes that died (their pid is gone)."""
        for p in self.dir.glob(".*.tmp.*"):
            try:
                pid = int(p.name.split(".tmp.")[1].split(".")[0])
                os.kill(pid, 0)
            except ProcessLookupError:
                p.unlink(missing_ok=True)
            except (ValueError, IndexError, PermissionError):
                pass

    def close(self) -> None:
        self.closed = True
        self.pool.shutdown(wait=False, cancel_futures=True)
