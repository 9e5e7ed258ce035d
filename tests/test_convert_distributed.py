"""The converter across machines: two torchrun launchers meeting through c10d on 127.0.0.1 (as two
nodes would) against a single-process conversion, byte for byte; a SIGKILLed node and a restart;
ranks that see different inputs."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, noise_tree, tree_digest
from pipeline.prepare.convert import convert
from pipeline.prepare.distributed import Ranks

TOOL = str(ROOT / "tools" / "prepare_imagenet.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(srcs, out, *args, restarts: int = 0) -> list[subprocess.Popen]:
    """One torchrun launcher per entry of ``srcs`` (each its own session, like a machine)."""
    port = _free_port()
    # torch 2.13's restarts otherwise reuse a rendezvous store with stale addresses (RELIABILITY.md).
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    return [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(srcs)}", "--nproc_per_node=1",
         f"--max-restarts={restarts}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
         "--rdzv_id=convert", TOOL, str(src), str(out), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True) for src in srcs]


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc: torchrun starts its ranks in new sessions)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def finish(nodes, timeout=300) -> list[tuple[int, str]]:
    results = []
    for p in nodes:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            _, err = p.communicate()
        results.append((p.returncode, err))
    return results


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """3 classes x (16 train, 4 val) photo-size JPEGs, each costing some milliseconds to convert."""
    return noise_tree(tmp_path_factory.mktemp("dsrc"), classes=3, per_class=16, wh=(800, 600))


def test_shares_cover_every_shard_once():
    from pipeline.prepare.pool import share as _share

    shards = {"val": [[0]] * 3, "train": [[0]] * 5}
    for world in (1, 2, 3, 7):
        shares = [_share(shards, Ranks(r, world)) for r in range(world)]
        flat = sorted(sk for share in shares for sk in share)
        assert flat == sorted([("train", k) for k in range(5)] + [("val", k) for k in range(3)])
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.timeout(600)
def test_two_nodes_equal_one_process_byte_for_byte(src, tmp_path):
    reference = tmp_path / "one"
    convert(src, reference, size=64, shard_size=3, workers=1, progress=False)
    two = tmp_path / "two"
    for code, err in finish(launch_nodes([src, src], two, "--size=64", "--shard_size=3", "--workers=2")):
        assert code == 0, err[-3000:]
    assert tree_digest(two) == tree_digest(reference)
    assert not (two / ".work").exists()


@pytest.mark.timeout(600)
def test_killed_node_then_restarted_job_gives_the_same_bytes(src, tmp_path):
    reference = tmp_path / "one"
    args = ["--size=256", "--shard_size=2", "--workers=2"]
    convert(src, reference, size=256, shard_size=2, workers=1, progress=False)
    out = tmp_path / "killed"
    nodes = launch_nodes([src, src], out, *args)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("train/*.shard")):
        time.sleep(0.01)
    (rank,) = children(nodes[1].pid)
    os.kill(rank, signal.SIGKILL)  # its launcher stops its pool workers (they share its session)
    codes = [code for code, _ in finish(nodes, timeout=120)]
    assert codes[1] != 0  # both launchers stop: one lost its rank, the other its peer
    published = len(list(out.glob("*/*.shard")))
    assert not (out / "manifest.json").exists() and published < 24 + 6, \
        "the kill came too late to test anything"
    for code, err in finish(launch_nodes([src, src], out, *args)):
        assert code == 0, err[-3000:]
    assert tree_digest(out) == tree_digest(reference)


@pytest.mark.timeout(600)
def test_killed_rank_restarted_by_torchrun_finishes_the_job(src, tmp_path):
    """With --max-restarts, torchrun restarts the whole group and the job finishes by itself."""
    reference = tmp_path / "one"
    convert(src, reference, size=256, shard_size=2, workers=1, progress=False)
    out = tmp_path / "restarted"
    nodes = launch_nodes([src, src], out, "--size=256", "--shard_size=2", "--workers=2", restarts=1)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("train/*.shard")):
        time.sleep(0.01)
    (rank,) = children(nodes[1].pid)
    os.kill(rank, signal.SIGKILL)
    assert not (out / "manifest.json").exists(), "the kill came too late to test anything"
    for code, err in finish(nodes):
        assert code == 0, err[-3000:]
    assert tree_digest(out) == tree_digest(reference)


@pytest.mark.timeout(600)
def test_ranks_seeing_different_inputs_stop_before_writing(src, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(src, other)
    (other / "train" / "c1" / "extra.jpg").write_bytes((src / "train" / "c0" / "0.jpg").read_bytes())
    out = tmp_path / "out"
    results = finish(launch_nodes([src, other], out, "--size=32"))
    for code, err in results:
        assert code == 1
        assert "error: the 2 ranks do not see the same inputs and options" in err
        assert "{'train': 48, 'val': 12} on rank 0 vs {'train': 49, 'val': 12} here" in err or \
               "{'train': 49, 'val': 12} on rank 0 vs {'train': 48, 'val': 12} here" in err
        assert "nothing was written" in err
    assert not out.exists()


@pytest.mark.timeout(300)
def test_pool_workers_die_with_a_killed_parent(src, tmp_path):
    """SIGKILL to the converting process alone (the OOM killer, a kill -9 outside torchrun): its
    workers must not go on with the tasks already queued to them, publishing shards by path while
    a restarted job writes the same temporaries."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, TOOL, str(src), str(out), "--size=256", "--shard_size=12",
                             "--workers=2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("train/*.shard")):
        time.sleep(0.01)
    pool = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    published = len(list(out.glob("*/*.shard")))
    try:
        assert len(pool) == 2 and not any(map(alive, pool)), "pool workers outlived their parent"
        time.sleep(1.0)
        assert len(list(out.glob("*/*.shard"))) == published, "shards published after the kill"
    finally:
        for pid in filter(alive, pool):
            os.kill(pid, signal.SIGKILL)
    assert not (out / "manifest.json").exists()
    convert(src, out, size=256, shard_size=12, workers=2, progress=False)
    reference = tmp_path / "one"
    convert(src, reference, size=256, shard_size=12, workers=1, progress=False)
    assert tree_digest(out) == tree_digest(reference)


@pytest.mark.timeout(600)
def test_out_refused_by_rank_0_stops_every_rank(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's")
    results = finish(launch_nodes([src, src], out, "--size=32"))
    for code, err in results:
        assert code == 1 and "is not empty and holds no dataset of this tool" in err, err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
