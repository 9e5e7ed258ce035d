"""store: the loader on a dataset in object storage, against the same dataset on local disk; and
shuffle: how well each sample order mixes the labels of a batch.

    python tools/benchmark.py store --data=RAW_DATASET[,JPEG_DATASET] [--shards=12] [--endpoint=URL]
        [--batch_size=256] [--crop=224] [--json=bench_out/store.json] [--quick]
    python tools/benchmark.py shuffle [--batch_size=256] [--json=bench_out/shuffle.json]

store: the first --shards train shards of each dataset (a view: links and a manifest listing
them) are uploaded to an S3 server: --endpoint (AWS_ENDPOINT_URL and keys from the environment),
else a SeaweedFS ``weed mini`` started here on 127.0.0.1 (tools/s3server.py). Then, one process,
one epoch each, the loader's dali-cpu row (mean="channel", lighting 0, as in the loader benchmark):

    get-s3fs           the store alone: every shard object read whole into memory by fsspec/s3fs,
                       FETCH_THREADS at once (MB/s: the bandwidth the store gives this machine)
    get-obstore        the same with obstore (Rust object_store), the other library considered
    fetch-s3fs         what the cache does (pipeline.store.Store.download): streamed to a file, its
                       sha256 computed on the way, FETCH_THREADS shards at once
    fetch-obstore      the same with obstore's stream
    s3-cold            --data=s3://..., an empty cache: every shard fetched during the epoch
    local              the directory memory-mapped, page cache warm (an epoch run before)
    s3-warm            the same URL and cache, a new loader: every shard already cached
                       (local and s3-warm: --epochs epochs each, alternated; the median epoch)

and, raw only, with cache_limit a quarter of the shards' bytes, two epochs each:

    block order        data_order=block (blocks of half the cache): bytes fetched and refetched per epoch
    global order       refused at start (the batches in flight touch more shards than fit): the
                       message; then global order at the smallest limit it accepts, and what it fetches

shuffle: the sampler alone (no data), ImageNet's train split as the converter writes it (1,281,167
samples in shards of 1,024, classes permuted across shards: class-mixed) and as a class-sorted
stream would be (every shard one class): distinct labels per batch, mean over one epoch, for the
global order and block orders of several sizes, against uniform sampling, C (1 - (1 - 1/C)^B).
"""
from __future__ import annotations

import json as jsonlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.errors import UsageError
from pipeline.load.sampler import Sampler
from tools.bench import harness as bench


def _view(data: Path, shards: int, out: Path) -> Path:
    """A dataset directory holding the first ``shards`` train shards of ``data`` (links), its val
    split unchanged, and a manifest listing just those."""
    manifest = jsonlib.loads((data / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    train["shards"] = train["shards"][:shards]
    train["count"] = sum(e["count"] for e in train["shards"])
    manifest["splits"] = {"train": train}
    out.mkdir(parents=True)
    for e in train["shards"] + [manifest["stats"]]:
        (out / e["file"]).parent.mkdir(parents=True, exist_ok=True)
        os.symlink((data / e["file"]).resolve(), out / e["file"])
    for name in ("skipped.json",):
        if (data / name).exists():
            shutil.copy(data / name, out / name)
    (out / "manifest.json").write_text(jsonlib.dumps(manifest, indent=1))
    return out


def _epoch(loader, epoch: int) -> tuple[int, float]:
    loader.set_epoch(epoch)
    n, t = 0, time.perf_counter()
    for images, _ in loader:
        n += len(images)
    return n, time.perf_counter() - t


def _get_all(store_url: str, entries: list[dict], threads: int, library: str, to_disk: Path | None) -> float:
    """Seconds to read every object whole with ``library`` ("s3fs": pipeline.store.Store, the
    cache's own path; "obstore"), into memory (``to_disk`` None), or as the cache fetches: streamed
    to a file in ``to_disk`` with its sha256 computed on the way."""
    import hashlib
    if library == "s3fs":
        from pipeline.store import Store
        store = Store(store_url)
        get = lambda e: len(store.read(e["file"]))  # noqa: E731
        fetch = lambda e: store.download(e["file"], to_disk / e["sha256"], e["bytes"])  # noqa: E731
    else:
        import obstore
        from obstore.store import S3Store
        bucket, _, prefix = store_url[len("s3://"):].partition("/")
        st = S3Store(bucket, endpoint=os.environ["AWS_ENDPOINT_URL"],
                     region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), client_options={"allow_http": True})
        get = lambda e: len(obstore.get(st, f"{prefix}/{e['file']}").bytes())  # noqa: E731

        def fetch(e):
            h = hashlib.sha256()
            with open(to_disk / e["sha256"], "wb") as out:
                for block in obstore.get(st, f"{prefix}/{e['file']}").stream(min_chunk_size=8 << 20):
                    h.update(memoryview(block))
                    out.write(memoryview(block))
            return h.hexdigest()
    if to_disk is not None:
        shutil.rmtree(to_disk, ignore_errors=True)
        to_disk.mkdir(parents=True)
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(get if to_disk is None else fetch, entries))
    seconds = time.perf_counter() - t
    if to_disk is None:
        assert sum(done) == sum(e["bytes"] for e in entries)
    else:
        assert done == [e["sha256"] for e in entries]
        shutil.rmtree(to_disk)
    return seconds


def store(data: str, endpoint: str | None = None, shards: int = 12, batch_size: int = 256, crop: int = 224,
          epochs: int = 5, json: str = "bench_out/store.json", quick: bool = False):
    """The loader on s3:// vs the local directory (see tools/bench/store.py)."""
    import pipeline
    from pipeline.load.loader import LoaderError, default_threads
    from pipeline.load.prefetch import needed_bytes
    from pipeline.store import FETCH_THREADS, ShardCache, human

    paths = [Path(p) for p in str(data).split(",")]
    for p in paths:
        if not (p / "manifest.json").exists():
            raise UsageError(f"--data: {p} is not a dataset directory (tools/prepare_imagenet.py writes one)")
    if shards < 4:
        raise UsageError(f"--shards must be >= 4 (a quarter of them is the cache limit), got {shards}")
    from tools.s3server import S3Server
    root = Path(tempfile.mkdtemp(prefix="store-bench-"))
    server = None
    rows, env = [], bench.environment()
    try:
        if endpoint is None:
            server = S3Server(root / "s3").start()
            os.environ.update(server.env())
        else:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
        threads = default_threads()[0]
        for k, path in enumerate(paths):
            view = _view(path, shards, root / f"view{k}")
            manifest = jsonlib.loads((view / "manifest.json").read_text())
            enc, entries = manifest["encoding"], manifest["splits"]["train"]["shards"]
            split_bytes = sum(e["bytes"] for e in entries)
            if server is not None:
                url = server.upload(view, f"bench-{k}-{enc}/ds")
            else:
                import s3fs
                url = f"s3://alexnet-bench-{os.getpid()}-{k}/ds"
                fs = s3fs.S3FileSystem()
                fs.mkdir(url[5:].split("/")[0])
                fs.put(str(view) + "/", url[5:] + "/", recursive=True)
            common = dict(batch_size=min(batch_size, 64) if quick else batch_size, crop=crop, device="cpu",
                          mean="channel", lighting=0, num_threads=threads)
            base = {"bench": "store", "encoding": enc, "size": manifest["size"], "shards": len(entries),
                    "split_bytes": split_bytes, "config": dict(common, dtype=None), **env}

            def row(system, n, seconds, fetched=None, **extra):
                r = {**base, "system": system, "images_per_s": n / seconds if n else None, "seconds": seconds,
                     "mb_per_s": (split_bytes if fetched is None else fetched) / seconds / 1e6, **extra}
                rows.append(r)
                shown = {k: v for k, v in extra.items() if k != "per_epoch"}
                print(f"{enc:<5} {system:<18} {r['images_per_s'] or 0:>9.0f} img/s {r['mb_per_s']:>8.1f} MB/s "
                      f"{seconds:>7.2f} s {shown}", flush=True)

            for library in ("s3fs", "obstore"):
                for kind, to_disk in (("get", None), ("fetch", root / "fetched")):
                    try:
                        row(f"{kind}-{library}", 0, _get_all(url, entries, FETCH_THREADS, library, to_disk),
                            threads=FETCH_THREADS)
                    except ImportError as e:
                        print(f"{kind}-{library} skipped: {e}")
            cache = root / f"cache{k}"
            cold = pipeline.build_loader(url, "train", cache_dir=cache, **common)
            cold.prepare()
            n, s = _epoch(cold, 0)
            row("s3-cold", n, s, fetched=cold.cache_stats()["bytes_fetched"],
                waited_s=cold.cache_stats()["waited_s"])
            cold.close()
            ShardCache._instances.clear()  # a new cache object on the warm directory (a new process's)
            local = pipeline.build_loader(view, "train", **common)
            warm = pipeline.build_loader(url, "train", cache_dir=cache, **common)
            for loader in (local, warm):
                _epoch(loader, 0)  # the page cache warm, DALI's graph built
            times = {"local": [], "s3-warm": []}
            for epoch in range(1, 1 + (1 if quick else epochs)):  # alternated: the same machine state
                for name, loader in (("local", local), ("s3-warm", warm)):
                    times[name].append(_epoch(loader, epoch))
            for name, runs in times.items():
                n, s = sorted(runs, key=lambda r: r[1])[len(runs) // 2]  # the median epoch
                row(name, n, s, fetched=0 if name == "s3-warm" else None, epochs=len(runs),
                    **({"shards_fetched": warm.cache_stats()["shards_fetched"]} if name == "s3-warm" else {}))
            local.close()
            warm.close()
            if enc != "raw":
                continue
            limit = split_bytes // 4
            for order in ("block", "global"):
                ShardCache._instances.clear()
                kw = dict(common, cache_dir=root / f"limit-{order}", data_order=order)
                try:
                    loader = pipeline.build_loader(url, "train", cache_limit=limit, **kw)
                    used_limit = limit
                except LoaderError as e:
                    print(f"{enc:<5} {order}-order at {human(limit)}: refused: {e}")
                    rows.append({**base, "system": f"{order}-order-quarter", "refused": str(e), "cache_limit": limit})
                    probe = pipeline.build_loader(view, "train", **common)
                    need, _ = needed_bytes(probe.data, probe.plan(0)[0], probe.sampler.global_batch,
                                           probe.prefetch + 2)
                    probe.close()
                    used_limit = need
                    loader = pipeline.build_loader(url, "train", cache_limit=need, **kw)
                seconds, n = 0.0, 0
                for epoch in (0, 1, 2):  # epoch 2 only closes epoch 1's count (its first batch)
                    if epoch == 2:
                        loader.set_epoch(2)
                        next(iter(loader))
                        break
                    m, s = _epoch(loader, epoch)
                    n, seconds = n + m, seconds + s
                per_epoch = loader._prefetch.per_epoch()
                fetched = sum(p["bytes_fetched"] for p in per_epoch)
                row(f"{order}-order", n, seconds, fetched=fetched, cache_limit=used_limit,
                    limit_share=used_limit / split_bytes, per_epoch=per_epoch,
                    block_shards=loader.block_shards,
                    refetched_per_epoch=[p["bytes_refetched"] for p in per_epoch],
                    fetched_per_epoch=[p["bytes_fetched"] for p in per_epoch])
                loader.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    Path(json).parent.mkdir(parents=True, exist_ok=True)
    Path(json).write_text(jsonlib.dumps({"rows": rows}, indent=1, default=str))
    print(store_table(rows))


def store_table(rows: list[dict]) -> str:
    lines = ["| data | system | images/s | MB/s | seconds | vs local | fetched / refetched per epoch | cache limit | note |",
             "|---|---|--:|--:|--:|--:|---|--:|---|"]
    local = {r["encoding"]: r["images_per_s"] for r in rows if r.get("system") == "local"}
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['encoding']} | {r['system']} | – | – | – | – | – | {gb(r['cache_limit'])} | "
                         f"refused at start: {r['refused'].split(': ', 1)[1]} |")
            continue
        ratio = f"{r['images_per_s'] / local[r['encoding']]:.2f}x" if r.get("images_per_s") and local.get(r["encoding"]) else "–"
        fetched = "; ".join(f"{gb(f)} / {gb(x)}" for f, x in zip(r.get("fetched_per_epoch", []),
                                                                r.get("refetched_per_epoch", []))) or "–"
        limit = gb(r["cache_limit"]) if r.get("cache_limit") else "–"
        ips = f"{r['images_per_s']:,.0f}" if r.get("images_per_s") else "–"
        lines.append(f"| {r['encoding']} {r['size']}px, {r['shards']} shards | {r['system']} | {ips} | "
                     f"{r['mb_per_s']:,.0f} | {r['seconds']:.2f} | {ratio} | {fetched} | {limit} | "
                     f"{'block_shards ' + str(r['block_shards']) if r.get('block_shards') else ''} |")
    return "\n".join(lines)


# -- shuffle quality ----------------------------------------------------------------------------------

def _distinct_per_batch(labels: np.ndarray, order: np.ndarray, batch: int) -> float:
    steps = len(order) // batch
    b = labels[order[:steps * batch]].reshape(steps, batch)
    b = np.sort(b, axis=1)
    return float(((np.diff(b, axis=1) != 0).sum(axis=1) + 1).mean())


def shuffle(batch_size: int = 256, samples: int = 1_281_167, classes: int = 1000, shard_size: int = 1024,
            blocks: str = "1,4,16,64,160,313", seed: int = 0, json: str = "bench_out/shuffle.json"):
    """Distinct labels per batch in each sample order (see tools/bench/store.py)."""
    rng = np.random.default_rng(seed)
    sorted_labels = np.repeat(np.arange(classes), -(-samples // classes))[:samples]
    layouts = {"class-mixed shards (the converter's)": rng.permutation(sorted_labels),
               "class-sorted shards": sorted_labels}
    starts = np.append(np.arange(0, samples, shard_size), samples)
    expected = classes * (1 - (1 - 1 / classes) ** batch_size)
    rows = []
    sizes = [0] + [int(b) for b in str(blocks).split(",")]
    for layout, labels in layouts.items():
        for block in sizes:
            sampler = Sampler(samples, batch_size, 0, 1, seed, shuffle=True, drop_last=True,
                              shard_starts=starts, block_shards=block)
            distinct = _distinct_per_batch(labels, sampler.order(0), batch_size)
            rows.append({"bench": "shuffle", "layout": layout, "order": "global" if not block else "block",
                         "block_shards": block, "block_samples": block * shard_size, "distinct": distinct,
                         "uniform": expected, "ratio": distinct / expected})
    cache_rows = _cache_simulation(starts, batch_size, seed, shard_bytes=shard_size * 256 * 256 * 3)
    Path(json).parent.mkdir(parents=True, exist_ok=True)
    Path(json).write_text(jsonlib.dumps({"rows": rows, "cache": cache_rows, **bench.environment()},
                                        indent=1, default=str))
    lines = [f"distinct labels per batch of {batch_size}, {samples:,} samples, {classes} classes, shards of "
             f"{shard_size}; uniform sampling: {expected:.1f}", "",
             "| shards | order | block (shards / samples) | distinct labels per batch | vs uniform |",
             "|---|---|--:|--:|--:|"]
    for r in rows:
        blk = "–" if not r["block_shards"] else f"{r['block_shards']} / {r['block_samples']:,}"
        lines.append(f"| {r['layout']} | {r['order']} | {blk} | {r['distinct']:.1f} | {r['ratio']:.3f} |")
    lines += ["", f"a cache of a quarter of the split ({cache_rows[0]['cache_shards']} of {len(starts) - 1} shards of "
              f"{cache_rows[0]['shard_bytes'] / 1e6:.0f} MB, raw 256 px): simulated with the sampler's order, "
              f"least recently used shard evicted", "",
              "| order | block (shards) | shards the 4 batches in flight touch (most) | fetched per epoch | x the split |",
              "|---|--:|--:|--:|--:|"]
    for r in cache_rows:
        lines.append(f"| {r['order']} | {r['block_shards'] or '–'} | {r['in_flight_shards']} | "
                     f"{r['fetched_bytes'] / 1e12:.2f} TB | {r['fetched_bytes'] / r['split_bytes']:.2f} |")
    print("\n".join(lines))


def _cache_simulation(starts: np.ndarray, batch: int, seed: int, shard_bytes: int, share: float = 0.25,
                      in_flight: int = 4) -> list[dict]:
    """Shards fetched in one epoch, the cache empty at its start and holding ``share`` of the
    shards, least recently used evicted, for the global order and a block order of half the cache:
    the sampler's order, no data. Also the most shards ``in_flight`` consecutive batches touch."""
    from collections import OrderedDict
    n_shards = len(starts) - 1
    capacity = int(n_shards * share)
    rows = []
    for block in (0, capacity // 2):
        sampler = Sampler(int(starts[-1]), batch, 0, 1, seed, shuffle=True, drop_last=True,
                          shard_starts=starts, block_shards=block)
        shard = np.searchsorted(starts, sampler.order(0), side="right") - 1
        steps = len(shard) // batch
        per_step = [np.unique(s) for s in shard[:steps * batch].reshape(steps, batch)]
        widest = max(len(np.unique(np.concatenate(per_step[i:i + in_flight]))) for i in range(steps - in_flight + 1))
        cache, fetched = OrderedDict(), 0
        for need in per_step:
            for k in need.tolist():
                if k in cache:
                    cache.move_to_end(k)
                else:
                    fetched += 1
                    cache[k] = True
                    if len(cache) > capacity:
                        cache.popitem(last=False)
        rows.append({"order": "block" if block else "global", "block_shards": block, "cache_shards": capacity,
                     "shard_bytes": shard_bytes, "split_bytes": n_shards * shard_bytes,
                     "in_flight_shards": int(widest), "fetched_bytes": fetched * shard_bytes})
    return rows
