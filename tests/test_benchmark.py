"""tools/benchmark.py runs end to end and writes the documented JSON shape (not a speed test)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

KEYS = {"bench", "system", "images_per_s", "images_per_s_per_core", "workers", "n_images",
        "repeats", "median_s", "config", "device", "versions", "date", "cores_busy", "fixed_s",
        "marginal_images_per_s_per_core", "marginal_images_per_cpu_s", "subset_images"}


def test_prepare_quick(tree, tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "prepare", "--quick",
                           f"--source={tree}", f"--json={out}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| system |" in proc.stdout
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ours", "ffcv-writer", "pillow-loop", "decode-only", "decode-rgb", "preprocess",
                         "torch-aa-u8"}
    _assert_table_regenerates(proc, out, tmp_path)
    n_inputs = sum(1 for p in tree.rglob("*.JPEG"))
    for system, row in rows.items():
        if "skipped" in row:  # only FFCV is optional, and the note says how to get it
            assert system == "ffcv-writer" and "make setup-bench" in row["skipped"]
            continue
        assert KEYS <= set(row), (system, KEYS - set(row))
        assert row["bench"] == "prepare" and row["n_images"] == n_inputs
        assert row["workers"] == 1 and row["repeats"] == 1
        assert row["images_per_s"] > 0 and row["median_s"] > 0
        assert 1 <= row["subset_images"] < n_inputs
        assert row["device"]["cpu_count"] >= 1 and row["versions"]["numpy"]
    assert 30 < rows["ours"]["psnr_min_db"] <= rows["ours"]["psnr_mean_db"]
    assert "ours / decode-only, marginal per CPU second" in proc.stdout or \
        rows["ours"]["marginal_images_per_cpu_s"] is None  # timer noise on a tiny quick run
    projection = rows["ours"]["config"]["projection"]
    assert projection["raw_bytes"] == 251_887_681_536  # 1,281,167 x 256 x 256 x 3
    assert 0 < projection["jpeg_q90_bytes"] < projection["raw_bytes"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_suffix(".png").stat().st_size > 0


def _assert_table_regenerates(proc, json_path, tmp_path):
    """`benchmark.py table JSON` prints, line for line, the tables the run itself printed."""
    again = _run_bench(tmp_path, "table", str(json_path)).stdout.strip().splitlines()
    assert again and all(line in proc.stdout.splitlines() for line in again), again


def _run_bench(tmp_path, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| system |" in proc.stdout
    return proc


RATE_KEYS = {"bench", "system", "images_per_s", "images_per_s_per_core", "images_per_cpu_s", "workers",
             "batch_size", "crop", "steps", "n_images", "repeats", "median_s", "cores_busy",
             "other_cores_busy", "runs", "config", "device", "versions", "date"}


def test_loader_quick(tmp_path):
    """Generated 64 px data, crop 56, batch 32: every system measured or listed as not measured."""
    import torch

    out = tmp_path / "l.json"
    proc = _run_bench(tmp_path, "loader", "--quick", f"--json={out}")
    report = json.loads(out.read_text())
    rows = {r["system"]: r for r in report["rows"]}
    skipped = report["not_measured"]
    _assert_table_regenerates(proc, out, tmp_path)
    assert set(rows) | set(skipped) == {"dali-gpu", "dali-cpu", "dali-cpu+lighting", "ffcv",
                                        "torch-dataloader"} and not set(rows) & set(skipped)
    assert {"dali-cpu", "dali-cpu+lighting", "torch-dataloader"} <= set(rows)  # no optional part
    assert ("dali-gpu" in rows) == torch.cuda.is_available()
    if "dali-gpu" in skipped:
        assert "not measured (no GPU)" in proc.stdout
    if importlib.util.find_spec("ffcv") is not None:
        assert "ffcv" in rows
    for system, row in rows.items():
        assert RATE_KEYS <= set(row), (system, RATE_KEYS - set(row))
        assert row["bench"] == "loader" and row["batch_size"] == 32 and row["crop"] == 56
        assert row["images_per_s"] > 0 and row["repeats"] == len(row["runs"]) == 1
        assert row["n_images"] == sum(r["steps"] for r in row["runs"]) * 32
        assert row["config"]["dtype"] == "float32" and row["config"]["size"] == 64
        assert row["output_device"] == ("cuda" if system == "dali-gpu" else "cpu")
    for system in ("dali-cpu", "dali-cpu+lighting"):
        for peer, key in (("ffcv", "ratio_vs_ffcv"), ("torch-dataloader", "ratio_vs_torch")):
            # a ratio exactly where its peer was measured (the arithmetic: test_ratios_hand_computed)
            assert (rows[system][key] is not None) == (peer in rows), (system, key)
            if peer in rows:
                assert rows[system][key] > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize("abort_after_row", [False, True])
def test_loader_child_abort(tmp_path, monkeypatch, abort_after_row):
    """A system whose process aborts (as FFCV's did: "terminate called without an active
    exception", SIGABRT) costs its row only if the row was not yet written."""
    from tools.bench.loader import _run_child

    (tmp_path / "fake_child.py").write_text(
        "import json, os, sys\n"
        "if %r:\n"
        "    open(sys.argv[2], 'w').write(json.dumps({'system': 'x', 'note': 'n'}))\n"
        "sys.stderr.write('terminate called without an active exception\\n'); sys.stderr.flush()\n"
        "os.abort()\n" % abort_after_row)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    row, why = _run_child({}, 60, module="fake_child")
    if abort_after_row:
        assert why is None and row["note"] == "n; aborted at teardown (exit status -6)"
    else:
        assert row is None and why.startswith("not measured (crashed, exit status -6: terminate "
                                              "called without an active exception; Fatal Python error")


def test_ratios_hand_computed():
    """x FFCV and x torch for the DALI rows only, None where the peer was not measured."""
    from tools.bench.loader import _ratios

    rows = [{"system": "dali-cpu", "images_per_s": 300.0}, {"system": "ffcv", "images_per_s": 120.0},
            {"system": "torch-dataloader", "images_per_s": 50.0}]
    _ratios(rows)
    assert (rows[0]["ratio_vs_ffcv"], rows[0]["ratio_vs_torch"]) == (2.5, 6.0)
    assert "ratio_vs_ffcv" not in rows[1] and "ratio_vs_torch" not in rows[2]
    alone = [{"system": "dali-cpu+lighting", "images_per_s": 90.0}]
    _ratios(alone)
    assert alone[0]["ratio_vs_ffcv"] is None and alone[0]["ratio_vs_torch"] is None


def test_extra_ratios_only_at_the_same_batch():
    """x FFCV channels_last for the DALI rows at the run's batch; none for the rows at a quarter
    or 4x the batch (Python a batch against the batch size), whose images/s are not comparable."""
    from tools.bench.loader import _extra_ratios

    rows = [{"system": "dali-cpu", "images_per_s": 300.0}]
    extras = [{"system": "ffcv-channels-last", "images_per_s": 200.0},
              {"system": "dali-cpu-channels-last", "images_per_s": 250.0},
              {"system": "dali-cpu-quarter", "images_per_s": 100.0},
              {"system": "dali-cpu-x4", "images_per_s": 400.0}]
    _extra_ratios(extras, rows)
    assert rows[0]["ratio_vs_ffcv_channels_last"] == 1.5
    assert extras[1]["ratio_vs_ffcv_channels_last"] == 1.25
    assert all("ratio_vs_ffcv_channels_last" not in r for r in extras[2:])


def test_model_quick(tmp_path):
    """Two small models in one run: one row each, on synthetic CPU tensors."""
    out = tmp_path / "m.json"
    _run_bench(tmp_path, "model", "--quick", "--model=alexnet_small,small_bn", "--device=cpu",
               f"--json={out}")
    rows = json.loads(out.read_text())["rows"]
    assert [r["system"] for r in rows] == ["alexnet_small fp32", "small_bn fp32"]
    for row in rows:
        assert RATE_KEYS <= set(row), RATE_KEYS - set(row)
        assert row["bench"] == "model" and row["batch_size"] == 8 and row["crop"] == 28
        assert row["device_type"] == "cpu" and row["images_per_s"] > 0 and row["steps"] >= 2
        assert row["config"]["precision"] == "fp32" and row["config"]["mp"] == 1


def test_train_quick(tmp_path):
    """configs/tiny_cpu.yaml through trainer/main.py, plus the model-only figure and their ratio."""
    out = tmp_path / "t.json"
    _run_bench(tmp_path, "train", "--quick", f"--json={out}")
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"end-to-end", "model-only"}
    e2e, alone = rows["end-to-end"], rows["model-only"]
    for row in rows.values():
        assert row["bench"] == "train" and row["images_per_s"] > 0
        assert (row["model"], row["batch_size"], row["crop"], row["precision"]) == \
            ("alexnet_small", 16, 28, "fp32")  # configs/tiny_cpu.yaml
        assert row["device"]["cpu_count"] >= 1 and row["versions"]["torch"]
    # --quick: 12 steps logged every 2 = 6 windows, the first (warm-up) left out
    assert len(e2e["windows_images_per_s"]) == 5
    assert e2e["images_per_s"] in e2e["windows_images_per_s"]  # the median of an odd count is one
    assert e2e["saturation"] > 0 and alone["repeats"] == 1 and alone["steps"] >= 2
    assert e2e["config"]["trainer"]["eval_every"] == 0 and e2e["config"]["trainer"]["mp"] == 1


def test_learn_quick_resumes_and_reports(dataset, tmp_path):
    """Two recipes and the config as shipped (the same as paper-text on tiny_cpu.yaml: one run,
    two rows) for 4 steps, val after 2 and 4; a second call trains nothing and gives the same table;
    the summary figures follow from the per-step losses by hand."""
    out = tmp_path / "learn"
    args = [sys.executable, str(ROOT / "tools" / "benchmark.py"), "learn", f"--data={dataset}",
            "--config=configs/tiny_cpu.yaml", "--quick", "--candidates=paper-text,caffe,shipped",
            "--batch_size=8", f"--out={out}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| candidate |" in proc.stdout
    first = json.loads((out / "learn.json").read_text())["rows"]
    logs = {name: (out / "runs" / name / "log.txt").read_text() for name in ("paper-text", "caffe")}
    assert not (out / "runs" / "shipped").exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0 and "training to step" not in again.stdout  # all scored already
    assert {n: (out / "runs" / n / "log.txt").read_text() for n in logs} == logs
    rows = {r["candidate"]: r for r in json.loads((out / "learn.json").read_text())["rows"]}
    assert [r["candidate"] for r in first] == ["paper-text", "caffe", "shipped"]
    assert rows["shipped"]["loss"] == rows["paper-text"]["loss"] and "same run" in rows["shipped"]["note"]
    assert rows["caffe"]["loss"] != rows["paper-text"]["loss"]  # the overrides reached the trainer
    ln4 = 1.3862943611198906  # 4 classes
    for row in rows.values():
        loss = row["loss"]
        assert len(loss) == 4 and row["steps"] == 4 and sorted(map(int, row["val_top1_at"])) == [2, 4]
        assert row["max_after_1"] == max(loss[1:]) and row["loss_at_1"] == loss[0]
        below = [k + 1 for k, v in enumerate(loss) if v < 0.8 * ln4]
        assert row["first_below"] == (below[0] if below else None)
        assert 0 <= row["val_top1"] <= 1 and row["val_top1"] == row["val_top1_at"]["4"]
    assert (out / "learn.png").stat().st_size > 1000


def test_boundary_runs_both_ways_and_refuses_bad_arguments(dataset, tmp_path):
    """`benchmark.py boundary`: the four ways measured (inline and ahead, with and without
    lighting), one line each; a bad argument is one error line before any work."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "boundary",
                           f"--data={dataset}", "--repeats=1"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if "first step of epoch 1" in line]
    assert [line.split()[0] for line in lines] == ["inline", "inline", "ahead", "ahead"], proc.stdout
    assert all("longest GIL wait" in line for line in lines[2:])
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "boundary",
                          f"--data={dataset}", "--repeats=0"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert bad.returncode != 0 and "--repeats must be a positive integer" in bad.stderr
    assert "Traceback" not in bad.stderr
