"""model and train: what the network alone can take, and what training gets end to end.

    python tools/benchmark.py model [--model=alexnet[,alexnet_owt,...]] [--batch_size=128] [--crop=224]
        [--precision=fp32[,bf16]] [--channels_last] [--compile] [--device=auto] [--steps=N]
        [--seconds=10] [--repeats=3] [--json=bench_out/model.json] [--quick]
    python tools/benchmark.py train --config=CONFIG --data=DATASET [--steps=60] [--log_every=N]
        [--json=bench_out/train.json] [--quick] [--KEY=VALUE ...]

model: train-step images/s (forward, cross-entropy, backward, and the trainer's optimizer step:
    ``trainer.optim.build_optimizer`` with the default config's lr, momentum and weight decay) of
    ``trainer.models.build_model(name)`` (mp=1) on synthetic tensors
    that already sit on the device, so no loader is involved. CPU: wall clock; GPU: CUDA events.
    Warm-up, then --repeats runs of --steps or --seconds; runs disturbed by other processes are
    redone as in tools/bench/loader.py.
    Several models and precisions may be given comma-separated: one row each. The crop defaults to
    224, or the small models' input size; --quick: alexnet_small at 28 px, batch 8, ~0.5 s runs.
train: trainer/main.py as a subprocess (one process, mp=1) for --steps steps with --eval_every=0,
    no checkpoints but the last, in a temporary --out; end-to-end images/s is the median of its
    metrics.jsonl step rows after the first log window (the warm-up: DALI pipeline build, first
    batches). The same model, batch, crop, precision, channels_last and compile are then timed by
    ``model``, and saturation = end-to-end / model-only (1.0: the loader costs nothing; the goal in
    DESIGN.md is >= 0.95). Extra --KEY=VALUE flags go to the trainer. --quick: configs/tiny_cpu.yaml
    on a generated 32 px dataset, 12 steps.
"""
from __future__ import annotations

import json as jsonlib
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.errors import UsageError
from pipeline.load.dataset import open_dataset
from pipeline.prepare.convert import convert
from tools import synthetic
from tools.bench import harness as bench
from tools.bench.loader import QUICK_SIZES, busy_cpu_seconds, rate_row, time_steps, warm_up

ROOT = Path(__file__).resolve().parents[2]
SMALL_CROPS = {"alexnet_small": 28, "alexnet_owt_small": 28, "resnet50_small": 28, "small_bn": 28,
               "vgg16_small": 32, "cifar_cnn": 32}  # the others take 224
MODEL_COLUMNS = [("system", "system", "s"), ("device", "device_type", "s"), ("batch", "batch_size", "d"),
                 ("crop", "crop", "d"), ("steps", "steps", "d"), ("repeats", "repeats", "d"),
                 ("median s", "median_s", ".2f"), ("images/s", "images_per_s", ".1f"),
                 ("cores busy", "cores_busy", ".2f"), ("others busy", "other_cores_busy", ".2f"),
                 ("redone", "discarded_runs", "d")]
TRAIN_COLUMNS = [("system", "system", "s"), ("model", "model", "s"), ("precision", "precision", "s"),
                 ("batch", "batch_size", "d"), ("crop", "crop", "d"), ("images/s", "images_per_s", ".1f"),
                 ("saturation", "saturation", ".2f"), ("data wait (epoch)", "data_wait_frac", ".2f"),
                 ("others busy", "other_cores_busy", ".2f"),
                 ("note", "note", "s")]


def _listed(value) -> list[str]:
    """fire gives "a,b" as a tuple and "a" as a str."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def _device(device: str):
    from pipeline.device import resolve_device

    return resolve_device(device)  # the loader's and the trainer's rule (pipeline/device.py)


def train_step(name: str, batch_size: int, crop: int, precision: str, channels_last: bool,
               compile: bool, num_classes: int, device):
    """A closure doing one training step on fixed synthetic tensors, as trainer/main.py does it."""
    import torch
    import torch.nn.functional as F

    from trainer.config import Config
    from trainer.models import build_model
    from trainer.optim import build_optimizer
    from trainer.step import autocast, grad_scaler, optimize, precision_error

    if precision_error(precision, device.type):
        raise UsageError(f"--{precision_error(precision, device.type)}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = build_model(name, num_classes, crop).to(device, memory_format=fmt).train()
    optimizer = build_optimizer(net, Config())  # the recipe's defaults, as a training run steps
    if compile:
        net = torch.compile(net)
    scaler = grad_scaler(precision)
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch_size, 3, crop, crop, device=device, generator=g).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch_size,), device=device, generator=g)

    def step():
        with autocast(device.type, precision):
            loss = F.cross_entropy(net(images), labels)
        optimize(loss, optimizer, scaler)
    return step


def measure_model(name, batch_size, crop, precision, channels_last, compile, num_classes, device,
                  steps, seconds, repeats, warmup_s, env, retries=0, **extra) -> dict:
    import torch

    step = train_step(name, batch_size, crop, precision, channels_last, compile, num_classes, device)
    cuda = device.type == "cuda"
    synced = (lambda: (step(), torch.cuda.synchronize())) if cuda else step
    print(f"{name} {precision}: warming up", file=sys.stderr, flush=True)
    warm_up(synced, 5 if compile else 3, warmup_s)  # compile: traces and autotunes here
    runs = time_steps(step, repeats, steps, seconds, cuda=cuda, retries=retries, rewarm=1)
    system = " ".join([name, precision] + ["channels_last"] * bool(channels_last)
                      + ["compiled"] * bool(compile))
    config = {"model": name, "precision": precision, "channels_last": bool(channels_last),
              "compile": bool(compile), "num_classes": num_classes, "mp": 1,
              "torch_threads": torch.get_num_threads(), "warmup_s": warmup_s,
              "target_run_s": None if steps else seconds}
    return rate_row("model", system, runs, batch_size, torch.get_num_threads(), crop=crop,
                    device_type=device.type, config={**config, **extra}, **env)


def model(model: str | None = None, batch_size: int | None = None, crop: int | None = None,
          precision: str = "fp32", channels_last: bool = False, compile: bool = False,
          device: str = "auto", steps: int | None = None, seconds: float | None = None,
          repeats: int | None = None, num_classes: int = 1000, json: str = "bench_out/model.json",
          quick: bool = False):
    """Train-step images/s of models on synthetic device tensors (no loader).

    model: model name(s), comma-separated, e.g. alexnet,alexnet_owt (default: alexnet)
    batch_size: images per step (default: 128, or 8 with --quick)
    crop: input side in pixels (default: the model's: 224, or its small-input size)
    precision: fp32 | bf16 | fp16, comma-separated for several (fp16 needs CUDA)
    channels_last: NHWC memory format for images and weights
    compile: torch.compile the model first
    device: auto | cpu | cuda (auto: cuda when available)
    steps: steps per timed run (default: as many as fit in --seconds)
    seconds: target length of a timed run in seconds (default: 10, or 0.5 with --quick)
    repeats: timed runs per model (default: 3, or 1 with --quick)
    num_classes: outputs of the last layer
    json: where to write the results (JSON; a Markdown table and a PNG chart go beside it)
    quick: a smoke test: alexnet_small, short runs
    """
    names = _listed(model or ("alexnet_small" if quick else "alexnet"))
    precisions = _listed(precision)
    batch_size = batch_size or (8 if quick else 128)
    repeats = repeats or (1 if quick else 3)
    seconds = seconds or (0.5 if quick else 10.0)
    for key, value in (("batch_size", batch_size), ("repeats", repeats), ("num_classes", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"--{key} must be a positive integer, got {value!r}")
    dev = _device(device)
    env = bench.environment()
    rows = [measure_model(name, batch_size, crop or SMALL_CROPS.get(name, 224), p, channels_last, compile,
                          num_classes, dev, steps, seconds, repeats, 0.0 if quick else 2.0, env,
                          retries=0 if quick else 2 * repeats)
            for name in names for p in precisions]
    bench.report(rows, json, MODEL_COLUMNS, {"images_per_s": "train-step images/s"}, "images/s",
                 f"model: train step on synthetic {dev.type} tensors, batch {batch_size}, {repeats} repeats")


def train_options() -> list:
    """The trainer's config keys, accepted by ``train`` as overrides (the CLI checks them)."""
    import inspect

    from trainer.config import cli_options

    own = set(inspect.signature(train).parameters)  # --data, --log_every: train's own meaning
    return [opt for opt in cli_options() if opt.name not in own]


def _tiny_dataset(root: Path) -> Path:
    src = synthetic.make_imagefolder(root / "src", n_classes=4, train_per_class=24, val_per_class=2,
                                     sizes=QUICK_SIZES, seed=1)
    convert(src, root / "data", size=32, workers=1, progress=False)
    return root / "data"


def train(config: str | None = None, data: str | None = None, steps: int | None = None,
          log_every: int | None = None, seconds: float | None = None, repeats: int | None = None,
          json: str = "bench_out/train.json", quick: bool = False, **overrides):
    """End-to-end images/s of trainer/main.py, model-only images/s, and their ratio (saturation).

    config: a trainer config (YAML), required unless --quick
    data: a dataset from tools/prepare_imagenet.py, required unless --quick
    steps: training steps of the end-to-end run (default: 60, or 12 with --quick)
    log_every: steps per timed window (the first is warm-up; default: steps // 6)
    seconds: target length of a model-only timed run in seconds
    repeats: model-only timed runs
    json: where to write the results (JSON; a Markdown table and a PNG chart go beside it)
    quick: a smoke test on a tiny generated dataset with configs/tiny_cpu.yaml
    Any trainer config key (--lr=..., see "trainer config" below) overrides the config's value.
    """
    import yaml

    from trainer.config import make_config

    steps = steps or (12 if quick else 60)
    log_every = log_every or max(1, steps // 6)  # the first window is warm-up: 5 remain
    if not isinstance(steps, int) or steps < 2 * log_every:
        raise UsageError(f"--steps ({steps!r}) must be at least 2 x --log_every ({log_every}): the "
                         f"first log window is warm-up")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        generated = quick and data is None
        if quick:
            config = config or str(ROOT / "configs" / "tiny_cpu.yaml")
            data = data or _tiny_dataset(tmp)
        if config is None or data is None:
            raise UsageError("train needs --config and --data (or --quick)")
        overrides = {"mp": 1, **overrides}  # one process: the model bench is mp=1 too
        cfg = make_config(str(config), data=str(data), **overrides)
        ds = open_dataset(data)
        per_epoch = len(ds["train"]) // cfg.batch_size
        if per_epoch == 0:
            raise UsageError(f"{data}: {len(ds['train'])} train samples make no batch of {cfg.batch_size}")
        epochs = max(cfg.epochs, math.ceil(steps / per_epoch))  # max_steps must be reachable
        out = tmp / "run"
        cmd = [sys.executable, str(ROOT / "trainer" / "main.py"), f"--config={config}", f"--data={data}",
               f"--out={out}", f"--max_steps={steps}", f"--log_every={log_every}", "--eval_every=0",
               "--ckpt_every_steps=0", f"--epochs={epochs}"] + [f"--{k}={v}" for k, v in overrides.items()]
        print(" ".join(cmd), file=sys.stderr, flush=True)
        busy, cpu, t = busy_cpu_seconds(), bench._cpu_seconds(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - t, bench._cpu_seconds() - cpu  # cpu: the trainer's, reaped
        others = None if busy is None else max(0.0, busy_cpu_seconds() - busy - cpu) / wall
        if proc.returncode != 0:
            raise RuntimeError(f"trainer failed (exit {proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
        resolved = yaml.safe_load((out / "config.yaml").read_text())
        logged = [jsonlib.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        windows = [r for r in logged if r["kind"] == "step"][1:]  # the first window is warm-up
        if not windows:
            raise RuntimeError(f"trainer logged no step row after the first window: {out}/metrics.jsonl")

        env = bench.environment()
        dev = _device(resolved["device"])
        same = dict(batch_size=resolved["batch_size"], crop=resolved["crop"], precision=resolved["precision"])
        model_row = measure_model(resolved["model"], resolved["batch_size"], resolved["crop"],
                                  resolved["precision"], resolved["channels_last"], resolved["compile"],
                                  len(ds.classes), dev, None, seconds or (0.5 if quick else 10.0),
                                  repeats or (1 if quick else 3), 0.0 if quick else 2.0, env,
                                  retries=0 if quick else 2 * (repeats or 3))
        e2e = statistics.median(r["img_per_s"] for r in windows)
        config_row = {"config": str(config),
                      "data": "generated 32 px" if generated else str(Path(data).resolve()),
                      "steps": steps, "log_every": log_every, "overrides": overrides, "trainer": resolved}
        rows = [{"bench": "train", "system": "end-to-end", "images_per_s": e2e,
                 "model": resolved["model"], **same, "device_type": dev.type,
                 "saturation": e2e / model_row["images_per_s"],
                 "model_only_images_per_s": model_row["images_per_s"],
                 "windows_images_per_s": [r["img_per_s"] for r in windows],
                 "data_wait_frac": windows[-1]["data_wait_frac"], "trainer_cores_busy": cpu / wall,
                 "other_cores_busy": others,
                 "note": f"trainer/main.py, median of {len(windows)} log windows of {log_every} steps",
                 "config": config_row, **env},
                {**model_row, "bench": "train", "system": "model-only", "model": resolved["model"], **same,
                 "note": "same model on synthetic device tensors (model bench)"}]
    bench.report(rows, json, TRAIN_COLUMNS, {"images_per_s": "images/s"}, "images/s",
                 f"train: {resolved['model']} batch {resolved['batch_size']} crop {resolved['crop']} "
                 f"{resolved['precision']} on {dev.type}, {steps} steps")
