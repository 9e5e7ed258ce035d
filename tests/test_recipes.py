"""Every recipe in configs/ parses, states what it reproduces, and the brief's reference systems
run a few steps through the real chain on generated CIFAR pickles (the real data is not here)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.prepare.convert import convert
from helpers import write_cifar10, write_cifar100
from trainer.config import make_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_says_what_it_reproduces(path):
    cfg = make_config(str(path), data="x")
    assert cfg.model
    head = path.read_text().splitlines()[0]
    assert head.startswith("#") and len(head) > 20  # a comment naming what it reproduces


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("recipes")

    def batch(n, classes):
        return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n)

    c10 = {f"data_batch_{k}": batch(8, 10) for k in range(1, 6)}
    c10["test_batch"] = batch(8, 10)
    write_cifar10(base / "c10src", c10)
    write_cifar100(base / "c100src", {"train": batch(40, 100), "test": batch(8, 100)})
    data = {}
    for name, src, size in (("c10_32", "c10src", 32), ("c10_256", "c10src", 256), ("c100_32", "c100src", 32)):
        convert(base / src, base / name, size=size, shard_size=16, workers=1, progress=False)
        data[name] = base / name
    return data


@pytest.mark.timeout(600)
@pytest.mark.parametrize("config,data,nproc", [
    ("cifar10_alexnet.yaml", "c10_256", 2),   # the paper's towers, mp=2, 227 crops of 256 px
    ("cifar100_vgg16.yaml", "c100_32", 1),
    ("cifar100_resnet50.yaml", "c100_32", 1),
    ("cifar10_cnn.yaml", "c10_32", 1),
])
def test_reference_system_runs(cifar, tmp_path, config, data, nproc):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "trainer" / "main.py"), f"--config={ROOT / 'configs' / config}",
           f"--data={cifar[data]}", f"--out={out}", "--batch_size=8", "--max_steps=3", "--log_every=1",
           "--eval_every=1", "--device=cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-4000:]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "step"]
    assert len(losses) == 3 and all(np.isfinite(losses))
