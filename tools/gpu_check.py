"""The GPU acceptance run (`make gpu-check`): everything the project promises on CUDA, in one
command that fits in the few minutes a GPU is lent, with one JSON and one log to bring back.

    .venv/bin/python tools/gpu_check.py [--out=bench_out/gpu_check] [--images=2048]
    .venv/bin/python tools/gpu_check.py --dry_run     # the same steps on the CPU, tiny sizes

Steps (each a subprocess with its own time limit; a failed one is recorded and the rest go on):
  data      photo-like JPEGs converted by the project to raw 256 px and JPEG 256 px shards
  tests     pytest -m gpu: the GPU graph against the CPU graph (train / val / ten-crop, raw /
            JPEG, fp32 / fp16 / bf16, channels_last), the ring and use-after-free tests, the
            trainer in fp32 / bf16 / fp16 / compile stopped and resumed exactly, evaluate.py
            against the trainer's evaluation, data wait as device idle time
  syncs     host-device syncs per step, by phase, for each precision (tools/benchmark.py syncs)
  h2d       the host-to-device ceiling of the loader's bytes: pinned and pageable copies
  loader    tools/benchmark.py loader on raw 256 and on JPEG (nvJPEG), batch 256, crop 224
  model     AlexNet (paper, mp=1) and alexnet_owt, bf16 + channels_last, compile off and on
  train     end to end through trainer/main.py: the saturation (end-to-end / model-only)

Without CUDA it collects every GPU test (so a typo in one is found on the CPU), says so in one
line and exits 0. --dry_run runs every step but the CUDA-only ones on the CPU at smoke-test size:
the check of this script itself, done in the test suite.
"""
from __future__ import annotations

import json as jsonlib
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


STEPS = ("data", "tests", "syncs", "h2d", "loader-raw", "loader-jpeg", "model", "model-compile", "train")


def main(out: str = "bench_out/gpu_check", images: int = 2048, dry_run: bool = False,
         budget_s: int = 480, steps: str = "all"):
    """Run the GPU acceptance steps and write OUT/gpu_check.json and OUT/gpu_check.log.

    out: folder for the JSON, the log and every step's own output
    images: train images generated for the loader and training steps (val: 1/16 of it)
    dry_run: every step that does not need CUDA, on the CPU at smoke-test size
    budget_s: seconds for the whole run; a step that would start past it is skipped
    steps: comma-separated steps to run (default all): e.g. data,tests while other work waits for
        the machine, then the timed steps on a quiet one; the steps run before stay in the JSON
        (the data step's output is reused when it is there)
    """
    import torch

    from pipeline.errors import UsageError

    if not isinstance(images, int) or images < 16:
        raise UsageError(f"--images must be an integer >= 16, got {images!r}")
    if not isinstance(budget_s, int) or budget_s < 1:
        raise UsageError(f"--budget_s must be a positive integer, got {budget_s!r}")
    chosen = set(STEPS) if steps == "all" else {x for x in str(steps).split(",") if x}
    if not chosen or chosen - set(STEPS):
        raise UsageError(f"--steps: unknown {sorted(chosen - set(STEPS))}; choose from all or "
                         f"{','.join(STEPS)}")
    cuda = torch.cuda.is_available()
    if not cuda and not dry_run:
        n = _collect_gpu_tests()
        print(f"gpu-check: no CUDA on this machine: collected {n} GPU tests without error, ran none "
              f"(--dry_run runs the other steps on the CPU)")
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    whole = chosen == set(STEPS)  # else a part: the log and the JSON keep what earlier parts wrote
    log = open(out / "gpu_check.log", "w" if whole else "a")
    t_start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
              "dry_run": dry_run, "steps": {}}
    if not whole and (out / "gpu_check.json").exists():
        before = jsonlib.loads((out / "gpu_check.json").read_text())
        report["steps"] = {k: v for k, v in before.get("steps", {}).items() if k not in chosen}
    if cuda:
        report["driver_cuda"] = ".".join(map(str, _driver()))
    py = sys.executable
    size = 256 if not dry_run else 64
    crop = 224 if not dry_run else 56
    batch = 256 if not dry_run else 16

    def step(name, cmd, timeout, needs_cuda=False, result=None, env=None):
        if name not in chosen:
            return
        left = budget_s - (time.perf_counter() - t_start)
        if needs_cuda and not cuda:
            report["steps"][name] = {"status": "skipped", "why": "needs CUDA"}
            return
        if left < 10:
            report["steps"][name] = {"status": "skipped", "why": "over the time budget"}
            return
        t = time.perf_counter()
        print(f"== {name}: {' '.join(map(str, cmd))}", file=log, flush=True)
        try:
            res = subprocess.run(list(map(str, cmd)), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=min(timeout, left), env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
            status = "ok" if res.returncode == 0 else f"failed (exit {res.returncode})"
        except subprocess.TimeoutExpired:
            status = "timed out"
        entry = {"status": status, "seconds": round(time.perf_counter() - t, 1)}
        if result and Path(result).exists():
            entry["result"] = jsonlib.loads(Path(result).read_text()).get("rows")
        report["steps"][name] = entry
        print(f"gpu-check: {name}: {status} ({entry['seconds']} s)", flush=True)
        (out / "gpu_check.json").write_text(jsonlib.dumps(report, indent=1))

    raw, jpeg = out / "raw", out / "jpeg"
    step("data", [py, "-c", _MAKE_DATA, out, images, size], 180)
    if cuda:
        # each failure's traceback at once, and the slowest tests: a run stopped at its limit still says
        # why (on the first lent GPU, 13 failures lost to the limit)
        step("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "--durations=15",
                       f"--junitxml={out / 'tests.xml'}"], 300, env={"TESTS_FAILURES_AT_ONCE": "1"})
    step("syncs", [py, "tools/benchmark.py", "syncs", f"--data={raw}", f"--json={out / 'syncs.json'}"],
         90, needs_cuda=True, result=out / "syncs.json")
    step("h2d", [py, "-c", _H2D, size, batch, out / "h2d.json"], 60, needs_cuda=True, result=out / "h2d.json")
    timing = ["--seconds=0.5", "--repeats=1"] if dry_run else ["--seconds=4", "--repeats=2"]
    for name, data in (("loader-raw", raw), ("loader-jpeg", jpeg)):
        step(name, [py, "tools/benchmark.py", "loader", f"--data={data}", f"--batch_size={batch}",
                    f"--crop={crop}", "--extras=False", "--redo=0", *timing,
                    f"--json={out / (name + '.json')}"], 150, result=out / (name + ".json"))
    models = "alexnet_small" if dry_run else "alexnet,alexnet_owt"
    precision = "fp32" if dry_run else "bf16"
    for compiled in (False, True):
        name = f"model{'-compile' if compiled else ''}"
        step(name, [py, "tools/benchmark.py", "model", f"--model={models}", f"--precision={precision}",
                    "--channels_last=True", f"--compile={compiled}", f"--batch_size={batch}",
                    *(["--quick"] if dry_run else timing),  # quick: no waiting for a quiet machine
                    f"--json={out / (name + '.json')}"], 240, result=out / (name + ".json"))
    train = (["--quick"] if dry_run else
             [f"--config={ROOT / 'configs' / 'alexnet_paper.yaml'}", f"--data={raw}", "--mp=1",
              "--precision=bf16", "--channels_last=True", f"--batch_size={batch}", "--steps=60",
              *timing])
    step("train", [py, "tools/benchmark.py", "train", *train, f"--json={out / 'train.json'}"], 240,
         result=out / "train.json")
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu_check.json").write_text(jsonlib.dumps(report, indent=1))
    log.close()
    bad = [k for k, v in report["steps"].items() if v["status"] not in ("ok", "skipped")]
    print(f"gpu-check: {len(report['steps']) - len(bad)} of {len(report['steps'])} steps ok or skipped "
          f"in {report['seconds']} s; {out / 'gpu_check.json'}, {out / 'gpu_check.log'}")
    if bad:
        raise SystemExit(f"gpu-check: failed: {', '.join(bad)} (see {out / 'gpu_check.log'})")


def _collect_gpu_tests() -> int:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "gpu", "tests"],
                         cwd=ROOT, capture_output=True, text=True)
    if res.returncode not in (0, 5):  # 5: nothing collected
        raise SystemExit(f"gpu-check: collecting the GPU tests failed:\n{res.stdout[-3000:]}{res.stderr[-2000:]}")
    return sum(1 for line in res.stdout.splitlines() if "::" in line)


def _driver():
    from pipeline.device import driver_cuda
    return driver_cuda() or ("unknown",)


# The data step: photo-like JPEGs (synthetic, 4:3, 500-1024 px) converted by the project.
_MAKE_DATA = """
import sys
from pathlib import Path
from tools import synthetic
from pipeline.prepare.convert import convert
out, n, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
classes = 16
workers = min(16, len(__import__("os").sched_getaffinity(0)))  # 512 images took 57 s on one core of an H200's host
src = synthetic.make_imagefolder(out / "src", n_classes=classes, train_per_class=max(1, n // classes),
                                 val_per_class=max(1, n // classes // 16),
                                 sizes=((500, 375), (640, 480), (1024, 768)) if size >= 256 else ((96, 72),),
                                 seed=0, workers=workers)
for enc in ("raw", "jpeg"):
    dst = out / enc
    if not (dst / "manifest.json").exists():
        convert(src, dst, size=size, encoding=enc, workers=workers, progress=False)
print("data:", out)
"""

# The h2d step: copies of one loader batch of raw bytes, pinned and pageable, to the device.
_H2D = """
import json, sys, time
import torch
size, batch, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rows = []
for pinned in (True, False):
    host = torch.empty((batch, size, size, 3), dtype=torch.uint8, pin_memory=pinned)
    dev = torch.empty_like(host, device="cuda")
    for _ in range(3):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    n = 50
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        dev.copy_(host, non_blocking=True)
    b.record()
    b.synchronize()
    s = a.elapsed_time(b) / 1000
    rows.append({"bench": "h2d", "system": "pinned" if pinned else "pageable", "batch_size": batch,
                 "gb_per_s": n * host.numel() / s / 1e9, "images_per_s": n * batch / s})
json.dump({"rows": rows}, open(path, "w"), indent=1)
print(rows)
"""


if __name__ == "__main__":
    run_cli(main)
