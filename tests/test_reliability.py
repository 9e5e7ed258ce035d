"""Fault injection: kills at random moments, a full disk, unusable paths, damaged or changing
files, a diverging run. Each test adds what tests/test_convert.py, test_format.py and
test_trainer.py do not already cover; RELIABILITY.md lists both, with the figures of a long run.

Every trial test runs a small sample by default and RELIABILITY_TRIALS trials under the `slow`
marker (skipped unless that variable is set, see conftest.py):

    RELIABILITY_TRIALS=10 .venv/bin/python -m pytest -s -m slow tests/test_reliability.py

Linux only where it says so (/proc, RLIMIT_FSIZE, prctl, tmpfs).
"""
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline
from pipeline import FormatError
from pipeline.prepare.convert import convert
from helpers import MAIN, base_args, noise_tree, torchrun, tree_digest

ROOT = Path(__file__).resolve().parents[1]
PREPARE = [sys.executable, str(ROOT / "tools" / "prepare_imagenet.py")]
TRIALS = int(os.environ.get("RELIABILITY_TRIALS") or 0)


def trials(sample: int):
    """Parametrize ``n``: a bounded sample in every run, RELIABILITY_TRIALS under `slow`."""
    return pytest.mark.parametrize("n", [pytest.param(sample, id=f"sample{sample}"),
                                         pytest.param(TRIALS, id=f"long{TRIALS}", marks=pytest.mark.slow)])


def figures(name: str, **counts) -> None:
    """One line per test for RELIABILITY.md (shown with pytest -s)."""
    print(f"\nRELIABILITY {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def error_line(stderr: str) -> str:
    """The CLI's last stderr line (a progress bar may precede it), checked to be the only error."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.split("\n") if line.strip()]
    assert sum(line.startswith("error: ") for line in lines) == 1, stderr
    assert lines[-1].startswith("error: "), stderr
    return lines[-1]


def tree_state(root: Path) -> dict:
    """Every file's digest and every directory: what 'nothing was changed' compares."""
    return {"files": tree_digest(root),
            "dirs": sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())}


# -- converter: SIGKILL at random moments ---------------------------------------------------------

NOISE_OPTS = ["--size=64", "--shard_size=4", "--workers=2"]


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    """144 train + 36 val 640x480 JPEGs, their clean conversion, and its timing: seconds from
    start to job.json (start-up) and from job.json to exit (the conversion itself)."""
    root = tmp_path_factory.mktemp("noise")
    src = noise_tree(root / "src", classes=3, per_class=48)
    clean = root / "clean"
    t0 = time.perf_counter()
    proc = subprocess.Popen(PREPARE + [str(src), str(clean), *NOISE_OPTS], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not (clean / ".work" / "job.json").exists() and proc.poll() is None:
        time.sleep(0.002)
    t1 = time.perf_counter()
    assert proc.wait() == 0
    return src, clean, (t1 - t0, time.perf_counter() - t1)


def _start_and_kill(src, out, delay: float, after_job: bool) -> str:
    """Start the converter, SIGKILL its process group ``delay`` s after it wrote job.json
    (``after_job``) or after its start; return what the kill left: nothing, unfinished or complete."""
    proc = subprocess.Popen(PREPARE + [str(src), str(out), *NOISE_OPTS], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while after_job and not (out / ".work" / "job.json").exists() and proc.poll() is None:
        time.sleep(0.002)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its pool workers
    except ProcessLookupError:
        pass  # it had finished
    proc.wait()
    if (out / "manifest.json").exists():
        return "complete"
    return "unfinished" if out.exists() else "nothing"


@trials(2)
@pytest.mark.timeout(120 + 30 * max(TRIALS, 2))
def test_converter_killed_at_random_moments_twice_resumes_to_identical_bytes(noise, tmp_path, n):
    """Beyond test_convert's sample: kill moments spread over the whole conversion (finalize
    included), and every other trial the resuming run is killed too (start-up included) before
    a third run completes it."""
    src, clean, (startup, seconds) = noise
    want, count = tree_digest(clean), _samples(clean)
    rng = np.random.default_rng(1234)
    left = {"nothing": 0, "unfinished": 0, "complete": 0}
    kills = 0
    for trial in range(n):
        out = tmp_path / f"out{trial}"
        left[_start_and_kill(src, out, rng.uniform(0, 1.05 * seconds), after_job=True)] += 1
        if trial % 2:
            left[_start_and_kill(src, out, rng.uniform(0, startup + seconds / 2), after_job=False)] += 1
        kills += 1 + trial % 2
        subprocess.run(PREPARE + [str(src), str(out), *NOISE_OPTS], check=True, capture_output=True)
        assert tree_digest(out) == want, f"trial {trial}: differs from the clean run"
        assert _samples(out) == count
        shutil.rmtree(out)
    figures("converter-sigkill", trials=n, kills=kills, **left, identical=f"{n}/{n}", samples_lost=0)
    assert left["unfinished"] >= max(1, kills // 3), f"the kills proved little: {left}"


def test_kill_inside_the_final_cleanup_is_finished_by_the_rerun(tree, dataset, tmp_path):
    """Found by the random kills above: a kill while .work is being removed (manifest.json
    written, job.json already deleted) left the rest of .work behind for good."""
    out = tmp_path / "out"
    shutil.copytree(dataset, out)
    (out / ".work").mkdir()
    (out / ".work" / "train-00003.npz").write_bytes(b"partial statistics, not yet deleted")
    convert(tree, out, size=32, shard_size=5, workers=1, progress=False)
    assert tree_digest(out) == tree_digest(dataset) and not (out / ".work").exists()


BUGGY_PREPARE = """
import runpy, sys
import pipeline.prepare.worker as worker  # the converter's worker calls it
real = worker.to_rgb_square
def buggy(data, size, *args):  # a bug in our own preprocessing, met on some inputs
    if len(data) % 7 == 3:
        raise {error}("injected bug in to_rgb_square")
    return real(data, size, *args)
worker.to_rgb_square = buggy
sys.argv = sys.argv[1:]  # as if tools/prepare_imagenet.py were run itself
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("error", ["IndexError", "ValueError"])
def test_a_bug_in_our_code_stops_the_conversion_and_is_never_a_skip(tree, tmp_path, error):
    """Only the input's read and decode errors are skips: an exception of our own code (these two
    were once recorded as skipped inputs) stops tools/prepare_imagenet.py, and no manifest calls
    the dataset complete, and the CLI shows its traceback (only the project's user-facing errors
    become one line)."""
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", BUGGY_PREPARE.format(error=error),
                          str(ROOT / "tools" / "prepare_imagenet.py"),
                          str(tree), str(out), "--size=32", "--shard_size=5", "--workers=2"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode != 0, res.stderr[-2000:]
    assert "injected bug in to_rgb_square" in res.stderr
    assert "Traceback" in res.stderr and f"{error}: injected bug" in res.stderr
    assert not (out / "manifest.json").exists() and not (out / "skipped.json").exists()


def test_split_directories_are_fsynced_after_the_renames_before_the_manifest(tree, tmp_path, monkeypatch):
    """A power loss must never leave a manifest saying "complete" while a shard's rename is still
    only in the page cache: every split directory is fsynced after its last rename and before
    manifest.json is renamed into place. Every fsync and rename is recorded, whoever calls it."""
    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(a, b, *args, **kw):
        real_replace(a, b, *args, **kw)
        events.append(("rename", Path(b).resolve()))

    def fsync(fd):
        real_fsync(fd)
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).resolve()))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    out = (tmp_path / "out").resolve()
    convert(tree, out, size=32, shard_size=5, workers=1, progress=False)
    manifest = events.index(("rename", out / "manifest.json"))
    for split in ("train", "val"):
        renames = [i for i, (kind, p) in enumerate(events) if kind == "rename" and p.parent == out / split]
        assert len(renames) == len(list((out / split).iterdir()))
        synced = [i for i, e in enumerate(events) if e == ("fsync", out / split)]
        assert any(renames[-1] < i < manifest for i in synced), f"{split}/ not fsynced before the manifest"


def _samples(out: Path) -> int:
    m = json.loads((out / "manifest.json").read_text())
    return sum(s["count"] for s in m["splits"].values())


# -- converter: the disk fills up ------------------------------------------------------------------

def _limit_file_size(nbytes: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return preexec


@pytest.mark.parametrize("limit,fails_on", [
    (40_000, ".shard.tmp"),  # every shard (~53 kB) is over the limit: the first write fails
    (60_000, ".npz.tmp"),    # shards fit, a train shard's partial statistics (~100 kB) do not
])
def test_file_size_limit_is_one_clear_error_and_rerun_completes(tree, tmp_path, limit, fails_on):
    opts = ["--size=64", "--shard_size=4", "--workers=2"]
    clean, out = tmp_path / "clean", tmp_path / "out"
    convert(tree, clean, size=64, shard_size=4, workers=1, progress=False)
    res = subprocess.run(PREPARE + [str(tree), str(out), *opts], capture_output=True, text=True,
                         preexec_fn=_limit_file_size(limit))
    assert res.returncode == 1
    line = error_line(res.stderr)
    assert f"error: {out}" in line and fails_on in line and "File too large" in line, line
    assert "out of space" in line and "run the same command again to resume" in line, line
    failed = Path(line[len("error: "):].split(": ")[0])
    assert not failed.exists(), "the failed write left its partial file"
    res = subprocess.run(PREPARE + [str(tree), str(out), *opts], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert tree_digest(out) == tree_digest(clean)
    figures(f"disk-full-efbig-{limit}", trials=1, clean_error=1, resumed_identical=1, samples_lost=0)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root with CAP_SYS_ADMIN only); yields (mount point, grow)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); "
                    f"the RLIMIT_FSIZE test covers the same path")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)

    try:
        yield disk, grow
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_full_disk_is_one_clear_error_and_rerun_after_freeing_space_completes(tree, tmp_path, tiny_disk):
    disk, grow = tiny_disk
    opts = ["--size=64", "--shard_size=4", "--workers=2"]
    clean, out = tmp_path / "clean", disk / "out"
    convert(tree, clean, size=64, shard_size=4, workers=1, progress=False)
    res = subprocess.run(PREPARE + [str(tree), str(out), *opts], capture_output=True, text=True)
    assert res.returncode == 1
    line = error_line(res.stderr)
    assert f"error: {out}" in line and "No space left on device" in line, line
    assert "run the same command again to resume" in line, line
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/*.shard")}
    assert kept, "the disk filled before any shard was finished: the resume proves little"
    grow()
    res = subprocess.run(PREPARE + [str(tree), str(out), *opts], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert tree_digest(out) == tree_digest(clean)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished shards were not redone
    figures("disk-full-enospc-tmpfs", trials=1, clean_error=1, resumed_identical=1,
            shards_kept=len(kept), samples_lost=0)


def test_an_error_in_one_worker_stops_the_others_at_their_next_image(tree, tmp_path, monkeypatch):
    """workers=2, one image in ~0.1 s, the sixth image of the first worker to get there raises:
    the job raises that error within a few images' time, the other worker gives up the shard it is
    writing (no temporary file left: it was not killed half-way), and every shard published is
    complete."""
    import pipeline.prepare.worker as worker

    real, calls, token = worker.to_rgb_square, [], tmp_path / "raised"

    def slow_then_bad(*args, **kwargs):  # runs in the forked workers: a count per process
        calls.append(1)
        if len(calls) == 6:
            try:
                os.close(os.open(token, os.O_CREAT | os.O_EXCL))  # one worker only
            except FileExistsError:
                pass
            else:
                raise ValueError("injected")
        time.sleep(0.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(worker, "to_rgb_square", slow_then_bad)
    out = tmp_path / "out"
    start = time.monotonic()
    with pytest.raises(ValueError, match="injected"):
        convert(tree, out, size=32, shard_size=4, workers=2, progress=False)
    assert time.monotonic() - start < 5  # 32 images at 0.1 s on 2 workers would take 1.6 s more
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    for split in ("train", "val"):  # a published shard has its statistics beside it: done
        for shard in (out / split).glob("*.shard"):
            assert worker.is_done(out, split, int(shard.stem.split("-")[-1])), shard


# -- converter: unusable SRC or OUT ----------------------------------------------------------------

def _without_dac_override():
    """preexec_fn: root loses the capabilities that ignore permission bits (after exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _read_only_dir(path: Path):
    """chmod 0o555, and for root a preexec_fn that makes the bits count; skip if nothing can."""
    path.mkdir()
    path.chmod(0o555)
    preexec = _without_dac_override if os.geteuid() == 0 else None
    probe = subprocess.run([sys.executable, "-c", f"open({str(path / 'probe')!r}, 'w')"],
                           capture_output=True, preexec_fn=preexec)
    if probe.returncode == 0:
        (path / "probe").unlink()
        pytest.skip("cannot make a directory read-only for this user (root without CAP_SETPCAP?)")
    return preexec


@pytest.mark.parametrize("case", ["read_only_out_parent", "no_layout", "out_holds_other_dataset"])
def test_cli_refuses_with_one_line_and_changes_nothing(tree, dataset, tmp_path, case):
    """The CLI side of test_convert's API-level refusals, plus a read-only OUT parent: exit 1,
    one `error:` line naming the path, no traceback, not a byte created or deleted."""
    src, out, opts, preexec = tree, tmp_path / "out", ["--size=32", "--shard_size=5"], None
    if case == "read_only_out_parent":
        preexec = _read_only_dir(tmp_path / "ro")
        out = tmp_path / "ro" / "out"
        expect = f"error: [Errno 13] Permission denied: '{out}'"
    elif case == "no_layout":
        src = tmp_path / "src"
        src.mkdir()
        (src / "notes.txt").write_text("no images here")
        expect = f"error: {src}: no recognised layout"
    else:
        shutil.copytree(dataset, out)
        opts = ["--size=48", "--shard_size=5"]
        expect = f"error: {out} holds a different dataset (size: 32 there vs 48 now"
    before = tree_state(tmp_path), tree_digest(src)
    res = subprocess.run(PREPARE + [str(src), str(out), *opts, "--workers=1"], capture_output=True,
                         text=True, preexec_fn=preexec)
    assert res.returncode == 1
    assert error_line(res.stderr).startswith(expect), res.stderr
    assert (tree_state(tmp_path), tree_digest(src)) == before


# -- format: damage the other checks cannot see --------------------------------------------------

@pytest.fixture
def copy(dataset, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(dataset, dst)
    return dst


def _shard(root: Path, k: int) -> Path:
    return root / json.loads((root / "manifest.json").read_text())["splits"]["train"]["shards"][k]["file"]


def _replace(path: Path, data: bytes) -> None:
    """Swap a file's bytes by rename (a new inode: a memory map of the old file stays valid)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _flip_stats_byte(root: Path) -> Path:
    stats = root / "stats.npz"
    data = bytearray(stats.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside mean_image's data
    _replace(stats, bytes(data))
    return stats


def test_stats_flipped_byte_found_by_verify(copy):
    stats = _flip_stats_byte(copy)
    with pytest.raises(FormatError, match=f"{stats}: checksum mismatch"):
        pipeline.open_dataset(copy, verify=True)


def test_stats_flipped_byte_named_without_verify(copy):
    stats = _flip_stats_byte(copy)
    with pytest.raises(FormatError, match=f"{stats}"):
        pipeline.open_dataset(copy)


def test_shard_swapped_for_another_of_the_same_size_found_by_verify(copy):
    a, b = _shard(copy, 0), _shard(copy, 1)
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    _replace(a, b.read_bytes())  # a valid shard, right size, header and count: wrong content
    pipeline.open_dataset(copy)  # only a checksum can tell
    with pytest.raises(FormatError, match=f"{a}: checksum mismatch"):
        pipeline.open_dataset(copy, verify=True)


def test_label_flipped_in_a_shard_is_named_at_open_not_at_the_loss(copy, tmp_path):
    """One flipped label byte (the shard keeps its size; only verify=True checks sha256): the
    trainer stops before any step with one line naming the shard, not an IndexError mid-run."""
    shard = _shard(copy, 1)
    with open(shard, "rb") as f:
        header = pipeline.format.unpack_header(f.read(pipeline.format.HEADER_SIZE), shard)
    data = bytearray(shard.read_bytes())
    data[int(header["labels_offset"]) + 4 * 2] ^= 0x40  # sample 2's label: 64 + its class
    _replace(shard, bytes(data))
    with pytest.raises(FormatError, match=f"{shard}: sample 2 has label 6[4-7], outside the 4 classes"):
        pipeline.open_dataset(copy)
    res = subprocess.run([sys.executable, MAIN, *base_args(copy, tmp_path / "run", mp=1)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 1
    assert f"{shard}: sample 2 has label" in error_line(res.stderr)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# -- loader: shards change on disk after build_loader ---------------------------------------------

def test_shards_changed_after_build_loader_are_caught_at_the_next_open(copy):
    """A running loader does not re-check its shards (RELIABILITY.md says what it then reads);
    the next open does: a restarted trainer's build_loader catches a size change, verify=True
    also a same-size rewrite."""
    loader = pipeline.build_loader(copy, "train", batch_size=4, crop=24, device="cpu", num_threads=1)
    batches = iter(loader)
    next(batches)  # the loader is running: shards mapped, DALI pipeline built
    swapped, cut = _shard(copy, 0), _shard(copy, 2)
    _replace(swapped, _shard(copy, 1).read_bytes())
    pipeline.open_dataset(copy)
    with pytest.raises(FormatError, match=f"{swapped}: checksum mismatch"):
        pipeline.open_dataset(copy, verify=True)
    _replace(cut, cut.read_bytes()[:-100])
    with pytest.raises(FormatError, match=f"{cut}: .*truncated or changed after conversion"):
        pipeline.build_loader(copy, "train", batch_size=4, crop=24, device="cpu")
    batches.close()


# -- trainer: a rank dies, elastic restart resumes exactly ----------------------------------------

RUN = dict(mp=2, max_steps=12, ckpt_every_steps=2, dropout=0.5)  # 3 steps an epoch: 4 epochs
# torch 2.13's torchrun keeps one rendezvous TCPStore for all restarts and the workers' keys carry
# no attempt prefix, so a restarted rank can read its peer's address from the dead attempt and
# the restart fails ("Gloo connectFullMesh failed ... Connection refused"; pytorch/pytorch#135712).
# The documented opt-out gives every attempt a fresh store (RELIABILITY.md).
RESTARTABLE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@pytest.fixture(scope="module")
def reference_losses(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    torchrun(2, *base_args(dataset, out, **RUN))
    return _losses(out)


def _losses(out: Path) -> dict:
    """Per-step losses; a line being written right now is not yet a step."""
    rows = {}
    path = out / "metrics.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row["kind"] == "step":
            rows[row["step"]] = row["loss"]
    return rows


def _worker_pids(launcher: int) -> list[int]:
    """The trainer processes the torchrun launcher started (its children running main.py)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
        if ppid == launcher and MAIN.encode() in cmdline:
            pids.append(int(stat.parent.name))
    return sorted(pids)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
@trials(1)
@pytest.mark.timeout(180 + 90 * max(TRIALS, 1))
def test_one_rank_sigkilled_job_restarts_and_resumes_exactly(dataset, tmp_path, reference_losses, n):
    """SIGKILL one worker (not the launcher) at a random step: with --max-restarts the elastic
    agent stops the other rank and restarts both, which resume from latest.pt; the per-step
    losses equal the uninterrupted run's."""
    rng = np.random.default_rng(99)
    at_steps, failures = [], []
    for trial in range(n):
        out = tmp_path / f"run{trial}"
        log = tmp_path / f"launcher{trial}.log"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--max-restarts=3", MAIN, *base_args(dataset, out, **RUN)]
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                    env=dict(os.environ, OMP_NUM_THREADS="1", **RESTARTABLE),
                                    start_new_session=True)
        try:
            kill_after = int(rng.integers(1, 11))  # logged steps seen before the kill
            deadline = time.time() + 120
            while len(_losses(out)) < kill_after and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            workers = _worker_pids(proc.pid)
            assert len(workers) == 2, f"expected 2 workers under the launcher, found {workers}"
            at_steps.append(len(_losses(out)))
            os.kill(int(rng.choice(workers)), signal.SIGKILL)
            assert at_steps[-1] < RUN["max_steps"], "the kill came too late to test anything"
            assert proc.wait(timeout=240) == 0, log.read_text()[-4000:]
        finally:
            if proc.poll() is None:  # a hung restart: workers run in sessions of their own
                for pid in _worker_pids(proc.pid):
                    os.kill(pid, signal.SIGKILL)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        failures.append(log.read_text().count("failed (exitcode"))  # the kill, then failed restarts
        assert failures[-1] == 1, f"trial {trial}: a restart failed too:\n{log.read_text()[-3000:]}"
        got = _losses(out)
        assert sorted(got) == sorted(reference_losses), f"trial {trial}: steps lost or repeated"
        np.testing.assert_allclose([got[s] for s in reference_losses], list(reference_losses.values()),
                                   rtol=1e-5, err_msg=f"trial {trial}, killed after step {at_steps[-1]}")
    figures("rank-sigkill", trials=n, killed_after_steps=at_steps, worker_group_failures=failures,
            completed=f"{n}/{n}", losses_equal=f"{n}/{n}", steps_lost=0)


# -- trainer: a kill while a checkpoint is being written ------------------------------------------

SAVER = r"""
import sys
from pathlib import Path
import torch
from trainer.checkpoint import save_atomic
path, version = Path(sys.argv[1]), int(sys.argv[2])
blob = torch.empty(8 << 20)  # 8 Mi float32: 32 MiB a version
while True:
    version += 1
    blob.fill_(version)
    save_atomic({{"version": version, "blob": blob}}, path)
    print(version, flush=True)
"""


@trials(3)
@pytest.mark.timeout(120 + 10 * max(TRIALS, 3))
def test_kill_during_checkpoint_write_leaves_a_complete_checkpoint(tmp_path, n):
    """save_atomic called in a loop, SIGKILLed at random moments: the file at the final name
    always loads and holds one whole version, at least the last one reported saved."""
    script = tmp_path / "saver.py"
    script.write_text(SAVER.format(root=str(ROOT)))
    path = tmp_path / "latest.pt"
    rng = np.random.default_rng(7)
    version, mid_write = 0, 0
    for trial in range(n):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(version)],
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # one save done: the process is in its write loop
        assert first.strip(), "the saver died before its first save"
        time.sleep(rng.uniform(0, 0.5))
        proc.kill()
        reported = [int(v) for v in (first + proc.stdout.read()).split()]
        proc.wait()
        temps = list(tmp_path.glob("latest.pt.tmp*"))
        mid_write += bool(temps)
        assert len(temps) <= 1, f"partial files pile up: {temps}"
        state = torch.load(path, weights_only=True)
        version = state["version"]
        assert version >= reported[-1], "a save that had returned was lost"
        assert state["blob"].numel() == 8 << 20 and bool((state["blob"] == version).all()), \
            f"trial {trial}: the checkpoint mixes versions"
    figures("checkpoint-write-sigkill", trials=n, kills_mid_write=mid_write, loadable=f"{n}/{n}",
            versions_lost=0)
    assert mid_write or n < 10, "no kill landed during a write: the test proved little"


# -- trainer: the loss diverges -------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message,kept_step", [
    # the loss explodes at step 2 and is NaN at step 3; latest.pt (step 2) still holds finite weights
    pytest.param({"lr": 1e6}, r"error: non-finite loss at step 3 \(epoch 0\); stopped, the last "
                              r"good checkpoint is .*latest\.pt", 2, id="nan_loss"),
    # finite loss at step 1 but the update overflows (decay 1e38 x lr 1000): no checkpoint of it
    pytest.param({"lr": 1000.0, "weight_decay": 1e38}, r"error: non-finite weights after step 1 "
                 r"\(epoch 0\); stopped, no checkpoint was written yet", None, id="inf_weights"),
])
def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(dataset, tmp_path, overrides,
                                                                          message, kept_step):
    out = tmp_path / "run"
    res = torchrun(1, *base_args(dataset, out, ckpt_every_steps=1 if kept_step is None else 2,
                                 **overrides), check=False)
    assert res.returncode != 0
    assert re.search(message, res.stderr), res.stderr[-3000:]
    latest = out / "checkpoints" / "latest.pt"
    if kept_step is None:
        assert not latest.exists()
        return
    state = torch.load(latest, weights_only=False)
    assert state["step"] == kept_step
    assert all(bool(torch.isfinite(t).all()) for t in [*state["model"].values(), *state["momentum"].values()])
