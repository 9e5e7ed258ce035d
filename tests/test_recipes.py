"""Every recipe in configs/ parses, states what it reproduces, and the brief's reference systems
run a few steps through the real chain on generated CIFAR pickles (the real data is not here)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.prepare.convert import convert
from helpers import write_cifar10, write_cifar100
from trainer.config import make_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_says_what_it_reproduces(path):
    cfg = make_config(str(path), data="x")
    assert cfg.model
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#")
    # the header a person reads and the recipe block tests/README read name the same work: at
    # least half of the block's words (4+ letters) appear in the header's first two lines
    head = set(re.findall(r"[a-z0-9]+", " ".join(lines[:2]).lower()))
    words = {w for w in re.findall(r"[a-z0-9]+", recipe(path)["reproduces"].lower()) if len(w) >= 4} - \
        {"with", "nothing", "that", "this", "from"}
    assert words and len(words & head) >= len(words) / 2, (sorted(words - head), lines[0])


EPOCH_METRICS = {"val_top1", "val_top5", "val_top1_10crop"}  # metrics.jsonl epoch keys with a reference


def recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["recipe"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_block_names_a_reference_the_run_measures(path):
    meta, cfg = recipe(path), make_config(str(path), data="x")
    assert set(meta) == {"reproduces", "source", "compare"}
    assert isinstance(meta["reproduces"], str) and len(meta["reproduces"]) > 10
    assert set(meta["compare"]) <= EPOCH_METRICS, meta["compare"]
    for metric, figure in meta["compare"].items():
        assert 0 < figure <= 1, (metric, figure)  # a fraction, as metrics.jsonl logs it
        assert cfg.eval_every > 0  # the run evaluates ...
        assert metric != "val_top1_10crop" or cfg.ten_crop_eval  # ... and logs this key
    assert bool(meta["compare"]) != meta["reproduces"].startswith("nothing")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_header_comment_agrees_with_the_schedule(path):
    comment = " ".join(line for line in path.read_text().splitlines() if line.startswith("#")).lower()
    cfg = make_config(str(path), data="x")
    if "plateau" in comment or "stops improving" in comment:
        assert cfg.lr_schedule == "plateau"
    if "cosine" in comment:
        assert cfg.lr_schedule == "cosine"
    every = re.search(r"every (\d+) epochs", comment)
    if every:
        assert (cfg.lr_schedule, cfg.lr_step_epochs) == ("step", int(every.group(1)))


def test_readme_recipe_table_matches_the_recipe_blocks():
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| `configs/([\w.]+\.yaml)` \|([^|]*)\|([^|]*)\|([^|]*)\|$", line)
        if m:
            rows[m.group(1)] = m.group(3)
    assert sorted(rows) == sorted(p.name for p in CONFIGS)  # one row per recipe, no stale rows
    for path in CONFIGS:
        compare, cell = recipe(path)["compare"], rows[path.name]
        if not compare:
            assert cell.strip() == "–", path.name
        for metric, figure in compare.items():
            percent = f"{round(100 * figure, 2):g}"
            assert re.search(rf"`{metric}` ~?{re.escape(percent)} %", cell), (path.name, metric, percent, cell)


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
