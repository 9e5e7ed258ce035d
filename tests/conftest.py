"""Shared fixtures: small generated ImageFolder trees and their converted datasets."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest


from pipeline.prepare.convert import convert
from tools import synthetic

SMALL_SIZES = ((96, 72), (72, 96), (120, 90), (64, 64))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (skipped without it)")
    config.addinivalue_line("markers", "slow: long fault-injection trials (run when RELIABILITY_TRIALS=N is set)")


def pytest_collection_modifyitems(config, items):
    """Long trials run only when RELIABILITY_TRIALS gives their count (tests/test_reliability.py)."""
    if os.environ.get("RELIABILITY_TRIALS"):
        return
    skip = pytest.mark.skip(reason="long fault-injection trials: set RELIABILITY_TRIALS=N to run them")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


FAILURES_AT_ONCE = "TESTS_FAILURES_AT_ONCE"  # tools/gpu_check.py sets it


def pytest_runtest_logreport(report):
    """With TESTS_FAILURES_AT_ONCE=1, each failure's traceback is written the moment the test fails,
    not in the summary at the end: a run stopped at its time limit (a lent GPU's minutes) still
    says why each test before the stop failed."""
    if report.failed and os.environ.get(FAILURES_AT_ONCE):
        text = report.longreprtext
        sys.stdout.write(f"\n=== FAILED {report.nodeid} ({report.when})\n{text[-6000:]}\n=== end\n")
        sys.stdout.flush()


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> Path:
    """4 classes x (6 train, 2 val) small JPEGs."""
    root = tmp_path_factory.mktemp("tree")
    return synthetic.make_imagefolder(root, n_classes=4, train_per_class=6, val_per_class=2,
                                      sizes=SMALL_SIZES, seed=1)


@pytest.fixture(scope="session")
def dataset(tree, tmp_path_factory) -> Path:
    """``tree`` converted at 32 px, raw, 5 samples a shard (several shards, one partial)."""
    out = tmp_path_factory.mktemp("ds") / "data"
    convert(tree, out, size=32, shard_size=5, workers=1, progress=False)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)
