"""Helpers shared by several test modules (fixtures live in conftest.py, image codecs in images.py)."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tools import synthetic

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def noise_tree(root: Path, classes: int, per_class: int, wh=(640, 480)) -> Path:
    rng = np.random.default_rng(7)
    for split, n in (("train", per_class), ("val", per_class // 4)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (wh[1] // 8, wh[0] // 8, 3), dtype=np.uint8)
                big = np.asarray(Image.fromarray(arr).resize(wh))  # blocky noise: quick to make
                (folder / f"{i}.jpg").write_bytes(synthetic.jpeg_bytes(big, 90))
    return root


MAIN = str(ROOT / "trainer" / "main.py")


def torchrun(nproc: int, *args, check=True, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           MAIN, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res


def kill_job(launcher) -> None:
    """SIGKILL a torchrun launcher (a Popen started with start_new_session=True) and its workers:
    torchrun starts each worker in a session of its own, so killing the launcher's process group
    alone leaves the ranks running."""
    import signal
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
        if ppid == launcher.pid:
            workers.append(int(stat.parent.name))
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(launcher.pid, signal.SIGKILL)


def losses(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "step"}


def base_args(dataset, out, **kw):
    args = {"config": str(ROOT / "configs" / "tiny_cpu.yaml"), "data": str(dataset), "out": str(out),
            "dropout": 0.0, "batch_size": 8, "log_every": 1, "eval_every": 0, "max_steps": 20,
            "epochs": 100}
    args.update(kw)
    return [f"--{k}={v}" for k, v in args.items()]


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = [f"fine_{k}" for k in range(100)]


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_batch(data, labels, key=b"labels", name=b"batch") -> dict:
    d = {b"batch_label": name, key: [int(v) for v in labels], b"data": data,
         b"filenames": [b"img_%d.png" % i for i in range(len(data))]}
    if key == b"fine_labels":
        d[b"coarse_labels"] = [int(v) // 5 for v in labels]
    return d


def write_cifar10(d: Path, batches: dict, skip=()) -> None:
    dump(d / "batches.meta", {b"num_cases_per_batch": 6, b"label_names": [n.encode() for n in CIFAR10_NAMES],
                              b"num_vis": 3072})
    for name, (data, labels) in batches.items():
        if name not in skip:
            dump(d / name, cifar_batch(data, labels, name=name.encode()))


def write_cifar100(d: Path, sets: dict) -> None:
    dump(d / "meta", {b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
                      b"coarse_label_names": [b"coarse_%d" % k for k in range(20)]})
    for name, (data, labels) in sets.items():
        dump(d / name, cifar_batch(data, labels, key=b"fine_labels", name=name.encode()))
