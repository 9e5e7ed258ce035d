"""The GPU acceptance command (tools/gpu_check.py) on a machine without CUDA: one line, exit 0,
every GPU test collected; --dry_run runs its CPU steps end to end (the script's own check)."""
import json
import subprocess
import sys

import pytest
import torch

from helpers import ROOT

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path")


def test_without_cuda_it_collects_the_gpu_tests_and_says_so_in_one_line():
    res = subprocess.run([sys.executable, "tools/gpu_check.py"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    [line] = res.stdout.strip().splitlines()
    assert line.startswith("gpu-check: no CUDA on this machine: collected ") and "ran none" in line
    assert int(line.split("collected ")[1].split()[0]) >= 15  # tests/test_gpu.py, every one


@pytest.mark.timeout(900)
def test_dry_run_runs_every_cpu_step_and_writes_one_json_and_one_log(tmp_path):
    out = tmp_path / "gc"
    res = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry_run", "--images=32", f"--out={out}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert {k for k, v in steps.items() if v["status"] == "ok"} == \
        {"data", "loader-raw", "loader-jpeg", "model", "model-compile", "train"}
    assert {k for k, v in steps.items() if v["status"] == "skipped"} == {"syncs", "h2d"}
    assert all(steps[k]["result"] for k in ("loader-raw", "model", "train"))
    assert (out / "gpu_check.log").stat().st_size > 0


def test_steps_run_in_parts_keep_one_report_and_a_wrong_name_is_one_line(tmp_path):
    out = tmp_path / "gc"

    def run(*args):
        return subprocess.run([sys.executable, "tools/gpu_check.py", "--dry_run", "--images=16", f"--out={out}",
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=300)

    bad = run("--steps=data,lodaer-raw")
    assert bad.returncode != 0 and "lodaer-raw" in bad.stderr and "Traceback" not in bad.stderr
    first = run("--steps=data")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert set(json.loads((out / "gpu_check.json").read_text())["steps"]) == {"data"}
    second = run("--steps=h2d,syncs")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert steps["data"]["status"] == "ok"  # the first part's step is still there
    assert {k for k, v in steps.items() if v["status"] == "skipped"} == {"h2d", "syncs"}
    assert set(steps) == {"data", "h2d", "syncs"}
    assert "== data" in (out / "gpu_check.log").read_text()  # the log is appended to, not replaced


def test_a_failure_is_written_at_once_so_a_run_stopped_at_its_limit_still_says_why(tmp_path):
    """gpu_check's tests step runs under a time limit; with -q pytest writes tracebacks only at the
    end, which a stopped run never reaches (what happened on the first lent GPU)."""
    import os
    import threading

    (tmp_path / "test_planted.py").write_text(
        "import time\n"
        "def test_fails():\n    assert 1 + 1 == 3, 'planted failure'\n"
        "def test_outlives_the_limit():\n    time.sleep(120)\n")
    env = dict(os.environ, TESTS_FAILURES_AT_ONCE="1", PYTHONPATH=str(ROOT / "tests"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                             str(tmp_path / "test_planted.py")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, limit = [], threading.Timer(60, proc.kill)  # the limit: pytest never gets to its summary
    limit.start()
    try:
        for line in proc.stdout:  # stop reading at the hook's end mark: the second test is still asleep
            seen.append(line)
            if line.startswith("=== end"):
                break
    finally:
        limit.cancel()
        proc.kill()
        proc.wait()
    text = "".join(seen)
    assert "=== FAILED" in text and "test_fails" in text and "planted failure" in text, text[-2000:]


def test_photos_made_on_several_cores_are_every_image_asked_for_and_the_same_each_time(tmp_path):
    from PIL import Image

    from tools import synthetic

    kw = dict(n_classes=3, train_per_class=4, val_per_class=2, sizes=((64, 48), (40, 56)), seed=5)
    a = synthetic.make_imagefolder(tmp_path / "a", workers=2, **kw)
    b = synthetic.make_imagefolder(tmp_path / "b", workers=3, **kw)
    for split, n in (("train", 4), ("val", 2)):
        for k in range(3):
            files = sorted((a / split / synthetic.wnid(k)).glob("*.JPEG"))
            assert len(files) == n
            for f in files:
                assert Image.open(f).size in ((64, 48), (40, 56))
                assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()  # not the worker count's doing
