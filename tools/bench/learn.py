"""Does a recipe learn? Several recipes trained side by side on one dataset (same data, seed and
order), each a real trainer run, with the per-step loss and the val top-1 every ``eval_every`` steps.

    python tools/benchmark.py learn --data=DATASET [--steps=156] [--batch_size=64] [--eval_every=40]
        [--candidates=paper-text,paper-dropout,code2012,caffe,owt-default,shipped] [--out=bench_out/learn]
    python tools/benchmark.py learn --source=/usr/share/datasets/fashion-mnist --train_per_class=1000 \\
        --val_per_class=100 --size=256     # converts that balanced subset into OUT/data first

Each candidate is ``trainer/main.py`` on ``--config`` (configs/alexnet_paper.yaml) with the
candidate's overrides, run to ``eval_every``, 2 x ``eval_every``, ... steps: the trainer resumes
from its own checkpoint, and ``tools/evaluate.py`` scores that checkpoint on val (centre crop)
between the segments. So a stopped comparison continues where it stopped, and a later call with
more ``--steps`` extends every candidate. The table: the loss at fixed steps, the most after step 1,
the first step below 0.8 ln C (C classes), the val top-1 at the end, images/s; a PNG of the curves
and JSON beside it. The loss is the logged mean of each step's batch (log_every=1).
"""
from __future__ import annotations

import gzip
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.errors import UsageError
from tools.bench import harness as bench

ROOT = Path(__file__).resolve().parents[2]

# name -> (config overrides, what it is). The paper AlexNet's init keys are named on every
# candidate, so a change of the shipped config's values never changes what a candidate means.
PAPER_TEXT = {"init": "paper", "bias_init": 1.0, "dropout_form": "inverted", "bias_lr_mult": 1.0}
CANDIDATES = {
    "paper-text": (PAPER_TEXT, "the paper's text: N(0, 0.01), biases 1, torch's dropout"),
    "paper-dropout": ({**PAPER_TEXT, "dropout_form": "paper"},
                      "the paper's text with its dropout form (unscaled in training, x 0.5 at test)"),
    "code2012": ({**PAPER_TEXT, "init": "code2012", "bias_lr_mult": 2.0, "dropout_form": "paper"},
                 "Krizhevsky's 2012 layer configs: conv3-5 std 0.03, biases 1 at lr x2, "
                 "cuda-convnet's dropout (x 0.5 at test)"),
    "caffe": ({**PAPER_TEXT, "init": "caffe", "bias_init": 0.1, "bias_lr_mult": 2.0},
              "Caffe's bvlc_alexnet: biases 0.1, fc6/fc7 std 0.005, bias lr x2"),
    "bias0.1": ({**PAPER_TEXT, "bias_init": 0.1}, "the paper's text with biases 0.1"),
    "owt-default": ({"model": "alexnet_owt", "init": "paper", "dropout_form": "inverted",
                     "bias_lr_mult": 1.0, "bias_init": 1.0},
                    "alexnet_owt (torchvision's layout), torch's default init: the reference"),
    "shipped": ({}, "the config as shipped"),
}
DEFAULT = "paper-text,paper-dropout,code2012,caffe,owt-default,shipped"
LOSS_AT = (1, 10, 25, 50, 100)
COLUMNS = ([("candidate", "candidate", "s")] +
           [(f"loss@{s}", f"loss_at_{s}", ".2f") for s in LOSS_AT] +
           [("loss last", "loss_last", ".2f"), ("max after 1", "max_after_1", ".2f"),
            ("< 0.8 ln C at", "first_below", "d"), ("val top-1", "val_top1", ".3f"),
            ("steps", "steps", "d"), ("images/s", "images_per_s", ".1f"), ("note", "note", "s")])


# -- a balanced IDX subset (Fashion-MNIST from Debian's dataset-fashion-mnist, MNIST) --------------

def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes(), mtime=0))


def idx_subset(src, dst, train_per_class: int, val_per_class: int, classes=None) -> Path:
    """The first ``*_per_class`` images of each class in file order (of ``classes``, relabelled
    0..k-1 in the given order; default all), written as gzipped IDX files the converter reads."""
    from pipeline.prepare.sources.idx import PREFIX, read_split
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        images, labels = read_split(src, split)  # a LayoutError names a missing or damaged file
        prefix = PREFIX[split]
        keep = list(range(int(labels.max()) + 1)) if classes is None else list(classes)
        chosen = []
        for new, old in enumerate(keep):
            where = np.flatnonzero(labels == old)[:per_class]
            if len(where) < per_class:
                raise UsageError(f"--source: {src}: class {old} has {len(where)} {split} images, "
                                 f"fewer than {per_class}")
            chosen += [(i, new) for i in where]
        chosen.sort()  # file order, classes mixed as in the source
        _write_idx(dst / f"{prefix}-images-idx3-ubyte.gz", images[[i for i, _ in chosen]])
        _write_idx(dst / f"{prefix}-labels-idx1-ubyte.gz", np.array([c for _, c in chosen], np.uint8))
    return dst


# -- running the candidates ----------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child: SIGTERM when the benchmark dies, so a killed comparison leaves no trainer
    running on in its run directory (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _python(args: list[str], log: Path) -> None:
    """One trainer or evaluation process, its output appended to ``log``; a failure names the log."""
    with open(log, "a") as f:
        f.write("$ " + " ".join(args) + "\n")
        f.flush()
        done = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_die_with_parent)
    if done.returncode:
        raise RuntimeError(f"{args[0]} exited with {done.returncode}; its output: {log}")


def run_candidate(name: str, overrides: dict, common: dict, steps: int, eval_every: int,
                  run_dir: Path) -> None:
    """Train ``name`` to ``steps`` in segments of ``eval_every``, scoring each segment's
    checkpoint on val; segments already scored are skipped (resume)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "log.txt"
    args = [f"--{k}={v}" for k, v in {**common, **overrides, "out": run_dir}.items()]
    for end in sorted(set(range(eval_every, steps, eval_every)) | {steps}):
        scored = run_dir / f"val_{end:06d}.json"
        if scored.exists():
            continue
        print(f"learn: {name}: training to step {end}", flush=True)
        _python(["trainer/main.py", *args, f"--max_steps={end}"], log)
        _python(["tools/evaluate.py", str(run_dir / "checkpoints" / "latest.pt"), "--ten_crop=False",
                 f"--json={scored}.tmp"], log)
        Path(f"{scored}.tmp").rename(scored)


def summarise(name: str, description: str, run_dir: Path, classes: int) -> dict:
    """The candidate's row from its metrics.jsonl (per-step losses) and val_*.json files."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    losses = {r["step"]: r["loss"] for r in rows if r.get("kind") == "step"}
    speeds = [r["img_per_s"] for r in rows if r.get("kind") == "step" and r["step"] > 1]
    vals = {}
    for p in sorted(run_dir.glob("val_*.json")):
        vals[int(p.stem.split("_")[1])] = json.loads(p.read_text())["one_crop"]["top1"]
    steps = sorted(losses)
    below = [s for s in steps if losses[s] < 0.8 * math.log(classes)]
    row = {"bench": "learn", "candidate": name, "description": description, "steps": steps[-1],
           "loss": [losses[s] for s in steps], "val_top1_at": vals,
           "loss_last": losses[steps[-1]],
           "max_after_1": max((losses[s] for s in steps if s > 1), default=None),
           "first_below": below[0] if below else None,
           "val_top1": vals[max(vals)] if vals else None,
           "images_per_s": statistics.median(speeds) if speeds else None, "note": description}
    row.update({f"loss_at_{s}": losses.get(s) for s in LOSS_AT})
    return row


def plot(rows: list[dict], classes: int, path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    aliases = {}  # a run shown once, under all its names
    for r in rows:
        if r.get("same_as"):
            aliases.setdefault(r["same_as"], []).append(r["candidate"])
    for r in rows:
        if r.get("same_as"):
            continue
        label = " = ".join([r["candidate"], *aliases.get(r["candidate"], [])])
        steps = np.arange(1, len(r["loss"]) + 1)
        loss = np.asarray(r["loss"])
        k = min(9, len(loss))  # a 9-step running mean over the per-step batch losses
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        (line,) = ax.plot(steps[k - 1:], smooth, label=label, lw=1.2)
        ax.plot(steps, loss, color=line.get_color(), lw=0.4, alpha=0.35)
        at = sorted(r["val_top1_at"])
        bx.plot(at, [r["val_top1_at"][s] for s in at], "o-", color=line.get_color(), label=label)
    ax.axhline(math.log(classes), color="grey", ls=":", lw=1)
    ax.text(1, math.log(classes), " ln C", va="bottom", fontsize=8, color="grey")
    ax.set(xlabel="step", ylabel="train loss (batch; 9-step mean bold)", ylim=(0, math.log(classes) + 2.5))
    bx.axhline(1 / classes, color="grey", ls=":", lw=1)
    bx.set(xlabel="step", ylabel="val top-1 (centre crop)", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def learn(data: str = "", source: str = "", train_per_class: int = 1000, val_per_class: int = 100,
          size: int = 256, config: str = "configs/alexnet_paper.yaml", candidates: str = DEFAULT,
          steps: int = 0, batch_size: int = 64, eval_every: int = 40, lr: float = 0.01, seed: int = 0,
          out: str = "bench_out/learn", quick: bool = False, report_only: bool = False):
    """Recipes side by side on one dataset: per-step loss, val top-1 every eval_every steps.

    data: a dataset directory (tools/prepare_imagenet.py); or give --source
    source: IDX files (e.g. /usr/share/datasets/fashion-mnist): a balanced subset is converted into OUT/data
    train_per_class: --source: train images per class
    val_per_class: --source: val images per class (from the IDX test set)
    size: --source: the converted size (256: a 224 px problem)
    config: the trainer config every candidate starts from
    candidates: comma-separated names (paper-text, paper-dropout, code2012, caffe, bias0.1, owt-default, shipped)
    steps: steps to train each candidate; 0 = one epoch
    batch_size: global batch size of every candidate
    eval_every: score val every this many steps
    lr: learning rate of every candidate
    seed: the data order, augmentation and init seed of every candidate
    out: folder for the runs, the JSON, the table and the PNG
    quick: a smoke test: 4 steps, val after 2
    report_only: train nothing: the table of what each candidate has reached so far in OUT
    """
    names = [c for c in str(candidates).split(",") if c]
    unknown = [c for c in names if c not in CANDIDATES]
    if unknown or not names:
        raise UsageError(f"--candidates: unknown {unknown}; choose from {', '.join(CANDIDATES)}")
    if bool(data) == bool(source):
        raise UsageError("give --data=DATASET or --source=IDX_DIR (one of them)")
    for key, value in (("steps", steps), ("batch_size", batch_size - 1), ("eval_every", eval_every - 1),
                       ("train_per_class", train_per_class - 1), ("val_per_class", val_per_class - 1)):
        if not isinstance(value, int) or value < 0:
            raise UsageError(f"--{key} must be a {'positive' if key != 'steps' else 'non-negative'} integer")
    if not Path(config).is_file() and (ROOT / config).is_file():
        config = str(ROOT / config)  # the shipped configs, from any working directory
    if not Path(config).is_file():
        raise UsageError(f"--config: {config}: no such file")
    config = str(Path(config).resolve())  # the runs start in the repository root
    if quick:
        steps, eval_every = 4, 2
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if source:
        from pipeline.prepare.convert import convert
        subset = idx_subset(source, out / "source", train_per_class, val_per_class)
        data = str(out / "data")
        convert(subset, data, size=size, progress=False)
    from pipeline import open_dataset
    data = str(Path(data).resolve())
    ds = open_dataset(data)
    classes = len(ds.classes)
    steps = steps or len(ds["train"]) // batch_size
    common = {"config": config, "data": data, "mp": 1, "batch_size": batch_size, "lr": lr,
              "seed": seed, "epochs": math.ceil(steps * batch_size / len(ds["train"])),
              "log_every": 1, "eval_every": 0, "ten_crop_eval": False, "ckpt_every_steps": 0}
    rows, seen = [], {}
    env = bench.environment()
    for name in names:
        overrides, description = CANDIDATES[name]
        key = json.dumps(_resolved({**common, **overrides}), sort_keys=True)
        if key in seen:  # the shipped config is one of the others: one run, two names
            row = {**next(r for r in rows if r["candidate"] == seen[key]), "candidate": name,
                   "note": f"{description}: the same run as {seen[key]}", "same_as": seen[key]}
            rows.append(row)
            continue
        if not report_only:
            run_candidate(name, overrides, common, steps, eval_every, out / "runs" / name)
        elif not (out / "runs" / name / "metrics.jsonl").exists():
            print(f"learn: {name}: not run yet in {out}", file=sys.stderr)
            continue
        seen[key] = name
        rows.append({**summarise(name, description, out / "runs" / name, classes), **env,
                     "config": {**common, **overrides}})
    title = (f"learn: {Path(config).name} on {Path(data).name} ({len(ds['train'])} train, "
             f"{len(ds['val']) if 'val' in ds else 0} val, {classes} classes), batch {batch_size}, "
             f"lr {lr}, " + ("the steps each has run" if report_only else f"{steps} steps"))
    json_path = out / "learn.json"
    json_path.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"{title}\n{env['date']}, {env['device']['cpu_model']} ({env['device']['cpus_usable']} usable "
          f"cores), " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + "\n")
    print(bench.markdown_table(rows, COLUMNS))
    png = out / "learn.png"
    print(f"\njson      {json_path}" + (f"\ncurves    {png}" if plot(rows, classes, png, title) else ""))


def _resolved(args: dict) -> dict:
    """The config keys that decide the training: the config file under a candidate's arguments."""
    from trainer.config import make_config, to_dict
    args = dict(args)
    cfg = to_dict(make_config(args.pop("config"), **args))
    return {k: v for k, v in cfg.items() if k not in ("data", "out")}
