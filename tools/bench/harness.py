"""What every benchmark of tools/benchmark.py shares: timing, the environment record, the report.

A benchmark times each system with ``time_runs`` (warm-up, repeats, fresh scratch directory per
call), turns the times into a row with ``throughput_row``, and hands all rows to ``report``:
JSON ``{"rows": [...]}``, a Markdown table on stdout, and a PNG bar chart next to the JSON.
Every row carries the date, machine and library versions, so a JSON file stands on its own.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_runs(run, repeats: int, warmup: int = 1, quiet: bool = True) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds) of each of ``repeats`` calls of ``run(scratch)``, after
    ``warmup`` untimed calls. CPU time counts every thread and worker process, so a system that
    quietly uses more than its nominal worker count shows it. Each call gets a new empty scratch
    directory, made and deleted outside the timing; ``quiet`` sends the systems' progress bars
    and summaries on stderr to /dev/null."""
    times = []
    for k in range(warmup + repeats):
        scratch = Path(tempfile.mkdtemp(prefix="bench-"))
        gc.collect()  # no collection of an earlier call's garbage inside this one's timing
        try:
            with open(os.devnull, "w") as null, \
                    (contextlib.redirect_stderr(null) if quiet else contextlib.nullcontext()):
                cpu, t = _cpu_seconds(), time.perf_counter()
                run(scratch)
                wall = time.perf_counter() - t
            for child in multiprocessing.active_children():
                child.join()  # finished workers not yet reaped (FFCV's writer): count their CPU
            cpu = _cpu_seconds() - cpu
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if k >= warmup:
            times.append((wall, cpu))
    return times


def throughput_row(bench: str, system: str, n_images: int, workers: int,
                   times: list[tuple[float, float]], subset: tuple[int, list] | None = None,
                   **extra) -> dict:
    """A result row from ``time_runs`` over ``n_images``.

    Per core = images/s divided by the worker processes that did the work; cores_busy = CPU
    seconds / wall seconds says whether that divisor was the true one. With ``subset`` = (k,
    time_runs over a k-image sample of the same inputs), the medians also give the fixed cost
    per run (process start, listing, manifest) and the marginal rate (seconds per extra image),
    which is what a conversion of 1.28 M images runs at; both assume the same worker count."""
    wall = statistics.median(t[0] for t in times)
    cpu = statistics.median(t[1] for t in times)
    row = {"bench": bench, "system": system, "images_per_s": n_images / wall,
           "images_per_s_per_core": n_images / wall / workers, "workers": workers,
           "n_images": n_images, "repeats": len(times), "median_s": wall, "median_cpu_s": cpu,
           "cores_busy": cpu / wall, "images_per_cpu_s": n_images / cpu,
           "times_s": [t[0] for t in times], "cpu_times_s": [t[1] for t in times]}
    if subset is not None:
        k, small = subset
        wall_k = statistics.median(t[0] for t in small)
        cpu_k = statistics.median(t[1] for t in small)
        row.update(subset_images=k, subset_median_s=wall_k, fixed_s=None,
                   marginal_images_per_s_per_core=None, marginal_images_per_cpu_s=None)
        if wall > wall_k:  # else timer noise swamped the difference: None, use more images
            per_image = (wall - wall_k) / (n_images - k)
            row.update(fixed_s=wall_k - k * per_image,
                       marginal_images_per_s_per_core=1 / per_image / workers)
        if cpu > cpu_k:
            row["marginal_images_per_cpu_s"] = (n_images - k) / (cpu - cpu_k)
    return {**row, **extra}


def _dist_version(*prefixes: str) -> str | None:
    """Version of the first installed distribution whose name starts with a prefix (metadata
    only: importing torch or DALI just to read a version costs seconds)."""
    for prefix in prefixes:
        try:
            return metadata.version(prefix)
        except metadata.PackageNotFoundError:
            pass
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if any(name.startswith(p) for p in prefixes):
            return f"{dist.metadata['Name']} {dist.version}"
    return None


def versions() -> dict:
    from PIL import features

    import numpy

    return {"python": platform.python_version(), "numpy": numpy.__version__,
            "pillow": _dist_version("pillow"),
            "libjpeg_turbo": features.version("libjpeg_turbo"),  # Pillow's JPEG decoder
            "simplejpeg": _dist_version("simplejpeg"),  # the converter's decoder for plain JPEGs
            "torch": _dist_version("torch"), "dali": _dist_version("nvidia-dali"),
            "ffcv": _dist_version("ffcv"), "opencv": _dist_version("opencv-python")}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def machine() -> dict:
    return {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)), "gpus": _gpus(),
            "platform": platform.platform()}


def environment() -> dict:
    """Date (UTC), machine and versions: merged into every row."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": machine(), "versions": versions()}


def _cell(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (header, row key, format spec); a missing value prints as an en dash."""
    lines = ["| " + " | ".join(c[0] for c in columns) + " |",
             "|" + "|".join("---" if c[2] == "s" else "--:" for c in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), spec) for _, key, spec in columns) + " |")
    return "\n".join(lines)


def bar_chart(rows: list[dict], series: dict[str, str], label: str, title: str, path: Path) -> bool:
    """Horizontal bars per system, one colour per ``series`` entry (row key -> legend text);
    False (and a message) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not importable: no chart written ({path})", file=sys.stderr)
        return False
    rows = [r for r in rows if not r.get("skipped")]
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) * len(series) + 1.4))
    for j, (key, legend) in enumerate(series.items()):
        y = [i + (j - (len(series) - 1) / 2) * height for i in range(len(rows))]
        bars = ax.barh(y, [r.get(key) or 0 for r in rows], height, label=legend)
        ax.bar_label(bars, fmt="%.0f", padding=3)
    ax.set_yticks(range(len(rows)), [r["system"] for r in rows])
    ax.invert_yaxis()  # first row on top, as in the table
    ax.set_xlabel(label)
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.15)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def report(rows: list[dict], json_path, columns, chart: dict[str, str], chart_label: str,
           title: str) -> None:
    """Write ``{"rows": rows}`` to ``json_path`` and the chart of the ``chart`` series (row key
    -> legend text) beside it; print the table."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    env = rows[0]
    print(f"{title}\n{env['date']}, {env['device']['cpu_model']} ({env['device']['cpus_usable']} "
          f"usable cores), " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v))
    print()
    print(markdown_table(rows, columns))
    print()
    png = json_path.with_suffix(".png")
    written = bar_chart(rows, chart, chart_label, title, png)
    print(f"json      {json_path}" + (f"\nchart     {png}" if written else ""))
