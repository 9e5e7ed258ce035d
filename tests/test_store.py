"""Datasets in object storage (pipeline/store.py, pipeline/load/prefetch.py) against a real S3
server on 127.0.0.1 (SeaweedFS, tests/s3server.py): the same samples and the same training as the
local directory, a verified node-local cache shared by processes, a cache limit with eviction,
and every fault named in one line."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline
from helpers import MAIN, ROOT, base_args, losses, torchrun
from pipeline.load.loader import LoaderError
from pipeline.store import StoreError, parse_bytes
from tools.s3server import S3Server
from tools import synthetic
from pipeline.prepare.convert import convert



def _largest_shard(data: Path) -> int:
    return max(e["bytes"] for e in json.loads((data / "manifest.json").read_text())["splits"]["train"]["shards"])


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server .ci/run started, or one of this module's own (stopped at its end)."""
    server = S3Server.shared_or_new(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()  # only a server this module started has a process to stop


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """40 train shards of 5 samples (32 px raw): enough shards for a cache smaller than the split."""
    root = tmp_path_factory.mktemp("many")
    tree = synthetic.make_imagefolder(root / "tree", n_classes=4, train_per_class=50, val_per_class=5,
                                      sizes=((40, 36),), seed=4)
    convert(tree, root / "data", size=32, shard_size=5, workers=1, progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def many_jpeg(many):
    """The same 40 shards' images as JPEG shards (the converter decodes the tree again)."""
    out = many.parent / "jpeg"
    convert(many.parent / "tree", out, size=32, shard_size=5, encoding="jpeg", workers=1, progress=False)
    return out


@pytest.fixture
def env(s3, monkeypatch):
    apply_env(monkeypatch, s3)
    return s3


def _bucket(s3, data: Path, name: str) -> str:
    return s3.upload(data, f"{name}/ds")


def _batches(loader, epochs=(0,)):
    out = []
    for e in epochs:
        loader.set_epoch(e)
        out += [(x.clone(), y.clone()) for x, y in loader]
    return out


def apply_env(monkeypatch, server: S3Server, **extra) -> None:
    """The AWS variables of ``server`` in this process (and no profile or config file of the user's)."""
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for k, v in server.env(**extra).items():
        monkeypatch.setenv(k, v)


# -- no server ---------------------------------------------------------------------------------

def test_sizes_and_urls():
    assert parse_bytes("64G") == 64 << 30 and parse_bytes("500MiB") == 500 << 20
    assert parse_bytes(1234) == 1234 and parse_bytes("") is None and parse_bytes(0) is None
    assert parse_bytes("1.5k") == 1536
    with pytest.raises(StoreError, match="not a size"):
        parse_bytes("lots")


# -- the same bytes ------------------------------------------------------------------------------

def test_a_bucket_opens_as_the_local_directory(env, dataset, tmp_path):
    url = _bucket(env, dataset, "same-bytes")
    remote = pipeline.open_dataset(url, cache_dir=tmp_path / "cache")
    local = pipeline.open_dataset(dataset)
    assert remote.classes == local.classes and remote.manifest_sha256 == local.manifest_sha256
    for k in local.stats:
        np.testing.assert_array_equal(remote.stats[k], local.stats[k])
    for split in ("train", "val"):
        np.testing.assert_array_equal(remote[split].labels, local[split].labels)
        for i in range(len(local[split])):
            a, b = remote[split][i], local[split][i]
            assert a[1] == b[1] and np.array_equal(a[0], b[0])
    # every shard fetched once, each under its sha256, nothing else left in the cache
    names = {e["sha256"] for s in local.manifest["splits"].values() for e in s["shards"]}
    assert {p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")} == names


@pytest.mark.parametrize("order", ["global", "block"])
def test_loader_batches_equal_the_local_ones_and_a_warm_cache_fetches_nothing(env, many, tmp_path, order):
    url = _bucket(env, many, f"loader-{order}")
    kw = dict(batch_size=8, crop=28, device="cpu", seed=1, data_order=order, block_shards=4 * (order == "block"))
    local = _batches(pipeline.build_loader(many, "train", **kw), (0, 1))
    cold = pipeline.build_loader(url, "train", cache_dir=tmp_path / "c", **kw)
    got = _batches(cold, (0, 1))
    assert len(got) == len(local) == 2 * 25
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, local))
    stats = cold.cache_stats()
    assert stats["shards_fetched"] == 40 and stats["bytes_refetched"] == 0
    shutil.rmtree(tmp_path / "c" / ".locks")  # the warm cache needs no lock files either
    from pipeline.store import ShardCache
    ShardCache._instances.clear()  # a new process: a new cache object on the same directory
    warm = pipeline.build_loader(url, "train", cache_dir=tmp_path / "c", **kw)
    assert len(_batches(warm)) == 25 and warm.cache_stats()["shards_fetched"] == 0


def test_jpeg_shards_from_a_bucket_under_a_cache_limit_give_the_local_batches(env, many_jpeg, tmp_path):
    """JPEG payloads gathered from shards the cache maps and evicts (16 of 40 fit): every batch
    of two epochs equals the local one, pixels and labels."""
    url = _bucket(env, many_jpeg, "jpeg")
    kw = dict(batch_size=4, crop=28, device="cpu", seed=2, prefetch=1, data_order="block", block_shards=8)
    local = _batches(pipeline.build_loader(many_jpeg, "train", **kw), (0, 1))
    loader = pipeline.build_loader(url, "train", cache_dir=tmp_path / "c",
                                   cache_limit=16 * _largest_shard(many_jpeg), **kw)
    got = _batches(loader, (0, 1))
    assert len(got) == len(local) == 100
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, local))
    # evicted and fetched again in epoch 1, each shard at most once an epoch. Whether any shard
    # of epoch 0 is still cached when epoch 1 needs it depends on the fetch threads' timing (the
    # cache evicts by access time): all 40 were fetched again in 1 of 5 runs, also before issue
    # 26's changes, so "fewer than 80" is not a claim this test can make.
    assert 40 < loader.cache_stats()["shards_fetched"] <= 80


def test_training_from_a_bucket_gives_the_local_losses(env, dataset, tmp_path):
    """Same bytes, same training: trainer/main.py on the s3:// copy gives exactly the per-step
    losses of the same run on the directory (global order)."""
    url = _bucket(env, dataset, "same-training")
    torchrun(1, *base_args(dataset, tmp_path / "local", max_steps=6))
    torchrun(1, *base_args(url, tmp_path / "remote", max_steps=6, cache_dir=str(tmp_path / "cache")))
    a, b = losses(tmp_path / "local"), losses(tmp_path / "remote")
    assert sorted(a) == list(range(1, 7)) and a == b
    # evaluate and inspect take the URL too: the same figures as on the directory
    results = {}
    for name, data in (("local", dataset), ("remote", url)):
        res = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"),
                              str(tmp_path / "remote" / "checkpoints" / "latest.pt"), f"--data={data}",
                              "--ten_crop=False", "--batch_size=4", f"--json={tmp_path / name}.json",
                              f"--cache_dir={tmp_path / 'cache2'}"],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-3000:]
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["one_crop"]
    assert results["local"] == results["remote"]
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_dataset.py"), url, "--verify",
                          f"--cache_dir={tmp_path / 'cache3'}"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0 and "all checksums match" in res.stdout, res.stderr[-3000:]


# -- the cache ------------------------------------------------------------------------------------

def _fetch_all(url, cache_dir, env, queue):
    import faulthandler
    faulthandler.dump_traceback_later(60, exit=True)  # a hang shows where, then ends the process
    os.environ.update(env)
    ds = pipeline.open_dataset(url, cache_dir=cache_dir)
    split = ds["train"]
    for f in [split.cache.fetch(e) for e in split.entries]:
        f.result()
    queue.put(split.cache.stats()["shards_fetched"])


def test_the_processes_of_a_node_download_each_shard_once(env, many, tmp_path):
    url = _bucket(env, many, "one-download")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fetch_all, args=(url, tmp_path / "shared", env.env(), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    counts = sorted(queue.get(timeout=5) for _ in procs)
    assert sum(counts) == 40, counts  # 40 shards, one download each, whoever made it
    assert all(p.exitcode == 0 for p in procs)
    assert len([p for p in (tmp_path / "shared").iterdir() if not p.name.startswith(".")]) == 40


@pytest.mark.parametrize("mean", ["pixel", "channel"])  # the graph crops / the gatherer crops
def test_a_cache_limit_evicts_and_block_order_fetches_each_shard_once_an_epoch(env, many, tmp_path, mean):
    """16 of 40 shards fit: every batch equals the local one, the cache never holds more than the
    limit after a batch, block order (blocks of 8 shards: half the cache) fetches every shard once
    in the epoch, global order cannot run under this limit (refused at start)."""
    url = _bucket(env, many, f"limit-{mean}")
    shard = _largest_shard(many)
    limit = 16 * shard
    kw = dict(batch_size=4, crop=28, device="cpu", seed=3, prefetch=1, mean=mean)
    local_loader = pipeline.build_loader(many, "train", data_order="block", block_shards=8, **kw)
    local = _batches(local_loader)
    loader = pipeline.build_loader(url, "train", cache_dir=tmp_path / "c", cache_limit=limit,
                                   data_order="block", **kw)
    assert loader.block_shards == 8  # half of the limit's 16 shards
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        n = 0
        for (x, y), (u, v) in zip(loader, local if epoch == 0 else local_next):
            assert torch.equal(x, u) and torch.equal(y, v)
            assert loader.data.cache.used_bytes() <= limit
            n += 1
        assert n == 50
        if epoch == 0:
            local_next = _batches(local_loader, (1,))
    fetched = loader._prefetch.per_epoch()
    assert fetched[0]["shards_fetched"] == 40 and fetched[0]["bytes_refetched"] == 0  # each once
    assert fetched[1]["shards_fetched"] <= 40  # again, less what the cache still held
    with pytest.raises(LoaderError, match="cannot hold the shards of the 3 batches in flight.*data_order=block"):
        pipeline.build_loader(url, "train", cache_dir=tmp_path / "g", cache_limit=4 * shard, **kw)


# -- faults and bad input ----------------------------------------------------------------------------

def test_an_object_whose_bytes_differ_is_named(env, dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    shard = bad / json.loads((bad / "manifest.json").read_text())["splits"]["train"]["shards"][1]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-200] ^= 0xFF  # a pixel flipped: same size, same header, another sha256
    shard.write_bytes(bytes(raw))
    url = _bucket(env, bad, "differs")
    loader = pipeline.build_loader(url, "train", batch_size=24, crop=28, device="cpu",
                                   cache_dir=tmp_path / "c")
    with pytest.raises(StoreError, match=r"differs/ds/train/00001.shard: its bytes differ from manifest.json.*twice"):
        next(iter(loader))
    assert not any(p.name.endswith(json.loads((bad / "manifest.json").read_text())["splits"]["train"]
                                   ["shards"][1]["sha256"]) for p in (tmp_path / "c").iterdir())


def test_missing_and_truncated_objects_are_named_before_step_1(env, dataset, tmp_path):
    url = _bucket(env, dataset, "missing")
    client = env.client()
    client.delete_object(Bucket="missing", Key="ds/train/00002.shard")
    with pytest.raises(pipeline.FormatError, match=r"missing/ds/train/00002.shard: missing in the store"):
        pipeline.open_dataset(url, cache_dir=tmp_path / "c")
    client.put_object(Bucket="missing", Key="ds/train/00002.shard", Body=b"short")
    with pytest.raises(pipeline.FormatError, match=r"00002.shard: 5 bytes in the store, manifest.json says"):
        pipeline.open_dataset(url, cache_dir=tmp_path / "c")
    with pytest.raises(pipeline.FormatError, match=r"missing/nothing/manifest.json: missing"):
        pipeline.open_dataset("s3://missing/nothing", cache_dir=tmp_path / "c")


def test_credentials_and_buckets_are_one_line(s3, dataset, tmp_path, monkeypatch):
    url = s3.upload(dataset, "creds/ds")
    apply_env(monkeypatch, s3, AWS_SECRET_ACCESS_KEY="wrong")
    with pytest.raises(StoreError, match=r"s3://creds/ds/manifest.json: access refused.*AWS_ACCESS_KEY_ID"):
        pipeline.open_dataset(url, cache_dir=tmp_path / "c")
    apply_env(monkeypatch, s3)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StoreError, match=r"s3://creds/ds/manifest.json: (no credentials|access refused)"):
        pipeline.open_dataset(url, cache_dir=tmp_path / "c")
    apply_env(monkeypatch, s3)
    with pytest.raises(StoreError, match=r"s3://no-such-bucket/ds/manifest.json: unknown bucket"):
        pipeline.open_dataset("s3://no-such-bucket/ds", cache_dir=tmp_path / "c")
    # through the trainer's command line: one line, no traceback, before any step
    res = subprocess.run([sys.executable, MAIN, *base_args("s3://no-such-bucket/ds", tmp_path / "run")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=dict(os.environ, AWS_SECRET_ACCESS_KEY="wrong"))
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "s3://no-such-bucket/ds/manifest.json" in res.stderr


def test_a_cache_that_cannot_hold_the_data_is_one_line_before_step_1(env, dataset, tmp_path, monkeypatch):
    url = _bucket(env, dataset, "space")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cache_dir .*a-file/cache: not writable"):
        pipeline.open_dataset(url, cache_dir=blocker / "cache")
    import pipeline.store as store
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(StoreError, match=r"cache_dir .*: 1000 B free .* \[train\] needs"):
        pipeline.build_loader(url, "train", batch_size=4, crop=28, device="cpu", cache_dir=tmp_path / "s")
    monkeypatch.undo()
    apply_env(monkeypatch, env)

    def full(self, name, dest, size=None, chunk=0):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store.Store, "download", full)
    loader = pipeline.build_loader(url, "train", batch_size=4, crop=28, device="cpu", cache_dir=tmp_path / "n")
    with pytest.raises(StoreError, match=r"cache_dir .*/n: out of space while fetching s3://space/ds/train/0000"):
        next(iter(loader))

    def unwritable(self, name, dest, size=None, chunk=0):
        raise PermissionError(13, "Permission denied", str(dest))
    monkeypatch.setattr(store.Store, "download", unwritable)
    loader = pipeline.build_loader(url, "train", batch_size=4, crop=28, device="cpu", cache_dir=tmp_path / "w")
    with pytest.raises(StoreError, match=r"cache_dir .*/w: cannot write .*Permission denied.*s3://space/ds/train/0000"):
        next(iter(loader))


def test_a_server_that_stops_mid_run_is_named_and_the_run_resumes_when_it_is_back(many, tmp_path):
    """The store stops while the trainer runs with a cache of 16 of the 40 shards (it must fetch
    as it goes): bounded retries, then one error naming the URL and the shard, never a hang; the
    same command after the server is back resumes from the checkpoint and finishes."""
    server = S3Server(tmp_path / "srv").start()
    try:
        url = server.upload(many, "stops/ds")
        limit = 16 * _largest_shard(many)
        args = base_args(url, tmp_path / "run", max_steps=60, batch_size=4, ckpt_every_steps=2,
                         cache_dir=str(tmp_path / "cache"), cache_limit=limit, data_order="block")
        env = dict(os.environ, **server.env(), OMP_NUM_THREADS="1")
        cmd = [sys.executable, MAIN, *args]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (metrics.exists() and len(losses(tmp_path / "run")) >= 6):
            time.sleep(0.05)
        server.stop()
        t = time.monotonic()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode != 0, out[-2000:]
        assert time.monotonic() - t < 120
        assert "Traceback" not in err and "s3://stops/ds/train/" in err and "did not answer" in err, err[-3000:]
        done = max(losses(tmp_path / "run"))
        assert done < 60
        server.start()
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "resum" in (res.stdout + res.stderr).lower()
        assert sorted(losses(tmp_path / "run")) == list(range(1, 61))
    finally:
        server.stop()


# -- the benchmarks ------------------------------------------------------------------------------------

def test_store_benchmark_runs_against_the_server(env, many, tmp_path, capsys):
    """A smoke run of tools/benchmark.py store on the test server: every row, the same images as
    the split, the quarter cache refused for the global order and the block order's fetches."""
    from tools.bench.store import store
    store(str(many), endpoint=env.endpoint, shards=8, batch_size=4, crop=28, json=str(tmp_path / "s.json"))
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    by = {r["system"]: r for r in rows}
    assert {"get-s3fs", "fetch-s3fs", "local", "s3-cold", "s3-warm", "block-order", "global-order"} <= set(by)
    assert by["s3-warm"]["shards_fetched"] == 0
    assert "global-order-quarter" in by and "or use data_order=block" in by["global-order-quarter"]["refused"]
    assert sum(by["block-order"]["fetched_per_epoch"]) >= by["block-order"]["split_bytes"]


def test_shuffle_benchmark_against_the_uniform_expectation(tmp_path):
    """Class-mixed shards (the converter's): every order gives uniform sampling's distinct labels
    per batch, C (1 - (1 - 1/C)^B); one-class shards in blocks of one shard give about 1-2 labels.
    The cache simulation: block order fetches the split once an epoch, global order far more."""
    from tools.bench.store import shuffle
    shuffle(batch_size=32, samples=20_000, classes=10, shard_size=100, blocks="1,8", json=str(tmp_path / "q.json"))
    saved = json.loads((tmp_path / "q.json").read_text())
    expected = 10 * (1 - 0.9 ** 32)
    for r in saved["rows"]:
        assert r["uniform"] == pytest.approx(expected)
        if r["layout"].startswith("class-mixed"):
            assert r["distinct"] == pytest.approx(expected, rel=0.02)
        elif r["block_shards"] == 1:
            assert r["distinct"] < 2.1
    block, glob = (next(r for r in saved["cache"] if r["order"] == o) for o in ("block", "global"))
    assert block["fetched_bytes"] == block["split_bytes"] and glob["fetched_bytes"] > 5 * glob["split_bytes"]
