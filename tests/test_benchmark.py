"""tools/benchmark.py runs end to end and writes the documented JSON shape (not a speed test)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

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
    assert set(rows) == {"ours", "ffcv-writer", "pillow-loop"}
    n_inputs = sum(1 for p in tree.rglob("*.JPEG"))
    for system, row in rows.items():
        if "skipped" in row:  # only FFCV is optional, and the note says how to get it
            assert system == "ffcv-writer" and "make setup-bench" in row["skipped"]
            continue
        assert KEYS <= set(row), (system, KEYS - set(row))
        assert row["bench"] == "prepare" and row["n_images"] == n_inputs
        assert row["workers"] == 1 and row["repeats"] == 1
        assert row["images_per_s"] > 0 and row["median_s"] > 0
        assert row["images_per_s_per_core"] == row["images_per_s"]  # one worker
        assert 1 <= row["subset_images"] < n_inputs
        assert row["device"]["cpu_count"] >= 1 and row["versions"]["numpy"]
    assert 30 < rows["ours"]["psnr_min_db"] <= rows["ours"]["psnr_mean_db"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_suffix(".png").stat().st_size > 0
