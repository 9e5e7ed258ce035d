"""loader: images/s of training batches, our DALI pipeline vs FFCV's Loader vs a torch DataLoader.

    python tools/benchmark.py loader [--data=DATASET] [--source=ORIGINAL_DIR] [--batch_size=256]
        [--crop=224] [--steps=N] [--seconds=10] [--repeats=3] [--images=N] [--cache=DIR]
        [--json=bench_out/loader.json] [--quick]

Every system delivers the same thing: float32 NCHW (contiguous) batches of ``batch_size`` random
crop x crop windows, mirrored with p = 0.5, normalised with the dataset's per-channel mean and std
(our ``mean="channel"``), with int64 labels; the first batch of each is checked for that.

    dali-gpu           pipeline.build_loader(device="cuda"): only with CUDA, timed with CUDA events
    dali-cpu           pipeline.build_loader(device="cpu", mean="channel", lighting=0)
    dali-cpu+lighting  the full AlexNet augmentation: mean="pixel" (mean image), PCA lighting 0.1
    ffcv               ffcv.loader.Loader over the train split exported to .beton (export not timed):
                       RandomResizedCrop with scale = (crop/size)^2 and ratio 1 (a plain random crop),
                       flip, NormalizeImage, ToTensor, ToTorchImage; its channels_last output is made
                       NCHW-contiguous with .contiguous(), and that copy is timed
    torch-dataloader   torch DataLoader over the ORIGINAL JPEGs (needs --source): Pillow decode, resize
                       the short side to the dataset size (bilinear), random crop, flip, /255, normalise

Workers: one per usable core for every system (DALI threads, FFCV threads, DataLoader processes).
Without --data it generates photo-size JPEGs (tools.synthetic) and converts them, which gives
both --source and --data (kept under --cache if given, else deleted). Timing per system: a warm-up
of at least 12 batches and 3 s (FFCV compiles its pipeline here), then --repeats runs, each of
--steps batches or as many as fit in --seconds (at most 100,000); the median of the runs' images/s
is reported. CPU seconds include worker processes; "others busy" is the cores that the rest of the
machine used meanwhile: a run with > 0.25 is redone after a wait for quiet (at most 2 x repeats
times; "redone" counts them), so that a shared machine does not decide the comparison. Generated
data has >= 10 batches an epoch, so epoch starts (DALI builds a pipeline per epoch) weigh little.
--quick: 64 px data, crop 56, batch 32, ~0.5 s runs (a smoke test, not a figure).
"""
from __future__ import annotations

import gc
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.errors import UsageError
from pipeline.load.dataset import open_dataset
from pipeline.prepare.convert import convert
from pipeline.prepare.sources import detect, read_bytes
from tools import synthetic
from tools.bench import harness as bench

LOADER_COLUMNS = [("system", "system", "s"), ("batch", "batch_size", "d"), ("crop", "crop", "d"),
                  ("steps", "steps", "d"), ("repeats", "repeats", "d"), ("median s", "median_s", ".2f"),
                  ("images/s", "images_per_s", ".0f"), ("images/CPU-s", "images_per_cpu_s", ".0f"),
                  ("cores busy", "cores_busy", ".2f"),
                  ("others busy", "other_cores_busy", ".2f"), ("redone", "discarded_runs", "d"),
                  ("x FFCV", "ratio_vs_ffcv", ".2f"),
                  ("x torch", "ratio_vs_torch", ".2f"), ("note", "note", "s")]
SYSTEMS = ("dali-gpu", "dali-cpu", "dali-cpu+lighting", "ffcv", "torch-dataloader")  # table order
QUICK_SIZES = ((96, 72), (72, 96), (120, 90))  # tiny JPEGs for --quick


# -- timing (also used by tools/bench_model.py) -----------------------------------------------------

def _proc_cpu(pid: int, tick: float) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime, fields 14 and 15


def _descendants(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                out += [int(child)] + _descendants(int(child))
    return out


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants. Persistent DataLoader
    workers are not reaped during a run, so getrusage(RUSAGE_CHILDREN) would miss them; without
    /proc it falls back to getrusage."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in [os.getpid()] + _descendants(os.getpid()):
            try:
                total += _proc_cpu(pid, tick)
            except OSError:
                pass  # exited between the listing and the read
        return total
    except (OSError, ValueError):
        return bench._cpu_seconds()


def busy_cpu_seconds() -> float | None:
    """CPU seconds that every process on the machine spent busy so far (/proc/stat: user, nice,
    system, irq, softirq, steal); None without /proc. Minus our own, it shows whether other work
    shared the cores during a run."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def warm_up(step, min_steps: int, min_seconds: float) -> None:
    """Call ``step()`` at least ``min_steps`` times and for at least ``min_seconds``: JIT compiles,
    thread and process start, pipeline builds, page cache and allocator all happen here."""
    t0, n = time.perf_counter(), 0
    while n < min_steps or time.perf_counter() - t0 < min_seconds:
        step()
        n += 1


def _wait_quiet(max_other_cores: float, limit_s: float = 120.0) -> None:
    """Sleep until the machine's busy cores over 2 s are below ``max_other_cores`` (we are idle
    meanwhile, once the loaders' prefetch queues are full), or ``limit_s`` passed."""
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        busy = busy_cpu_seconds()
        time.sleep(2.0)
        if busy is None or (busy_cpu_seconds() - busy) / 2.0 < max_other_cores:
            return


def time_steps(step, repeats: int, steps: int | None = None, seconds: float = 10.0,
               max_steps: int = 100_000, cuda: bool = False, retries: int = 0,
               max_other_cores: float = 0.25, rewarm: int = 8) -> list[dict]:
    """Each of ``repeats`` runs calls ``step()`` ``steps`` times, or (without ``steps``) until
    ``seconds`` have passed (at least 2, at most ``max_steps`` calls); call after ``warm_up``.
    Per run: wall s, CPU s of this process and its workers, steps, and other_cpu s (what the rest
    of the machine used meanwhile). With ``cuda`` the wall time comes from CUDA events on the current
    stream and the run ends with a synchronize, so queued device work is counted.

    On a shared machine a run during which other processes kept more than ``max_other_cores``
    busy is marked ``discarded`` and done again, after waiting for quiet and ``rewarm`` untimed
    steps (so that batches prefetched while waiting do not count), at most ``retries`` times in
    all; after that disturbed runs are kept, and their other_cpu_s shows it."""
    import torch

    def one() -> dict:
        gc.collect()  # no collection of the previous run's garbage inside this one
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        busy, cpu, t = busy_cpu_seconds(), tree_cpu_seconds(), time.perf_counter()
        n = 0
        while n < 2 or (n < steps if steps else (n < max_steps and time.perf_counter() - t < seconds)):
            step()
            n += 1
        if cuda:
            end.record()
            end.synchronize()  # sync point: every step's device work is done
        wall = time.perf_counter() - t
        cpu = tree_cpu_seconds() - cpu
        other = None if busy is None else max(0.0, busy_cpu_seconds() - busy - cpu)
        return {"wall_s": start.elapsed_time(end) / 1000 if cuda else wall, "cpu_s": cpu,
                "steps": n, "other_cpu_s": other, "discarded": False}

    runs = []
    while sum(not r["discarded"] for r in runs) < repeats:
        run = one()
        disturbed = run["other_cpu_s"] is not None and run["other_cpu_s"] / run["wall_s"] > max_other_cores
        if disturbed and sum(r["discarded"] for r in runs) < retries:
            run["discarded"] = True
            print(f"  run disturbed ({run['other_cpu_s'] / run['wall_s']:.2f} other cores busy): "
                  f"waiting for quiet, then again", file=sys.stderr, flush=True)
            _wait_quiet(max_other_cores)
            for _ in range(rewarm):
                step()
        runs.append(run)
    return runs


def rate_row(bench_name: str, system: str, runs: list[dict], batch_size: int, workers: int, **extra) -> dict:
    """A result row from ``time_steps``: medians over the kept runs (each run's own rate, since
    runs may differ in steps). ``other_cores_busy`` > ~0.1 means something else ran meanwhile."""
    med = statistics.median
    kept = [r for r in runs if not r["discarded"]]
    others = [r["other_cpu_s"] / r["wall_s"] for r in kept if r["other_cpu_s"] is not None]
    rate = med(r["steps"] * batch_size / r["wall_s"] for r in kept)
    return {"bench": bench_name, "system": system, "images_per_s": rate,
            "images_per_s_per_core": rate / workers, "workers": workers,
            "images_per_cpu_s": med(r["steps"] * batch_size / r["cpu_s"] for r in kept),
            "cores_busy": med(r["cpu_s"] / r["wall_s"] for r in kept),
            "other_cores_busy": med(others) if others else None,
            "batch_size": batch_size, "steps": int(med(r["steps"] for r in kept)),
            "n_images": sum(r["steps"] for r in kept) * batch_size, "repeats": len(kept),
            "discarded_runs": len(runs) - len(kept), "median_s": med(r["wall_s"] for r in kept),
            "runs": runs, **extra}


# -- the systems: each returns next_batch() -> (images, labels), cycling over epochs -------------

def _cycle(epoch_iter):
    """Batches forever: ``epoch_iter(epoch)`` gives one epoch's iterator."""
    epoch = 0
    while True:
        got = False
        for batch in epoch_iter(epoch):
            got = True
            yield batch
        if not got:
            raise ValueError("an epoch yielded no batch: fewer train samples than one batch")
        epoch += 1


def _dali(data, batch_size, crop, workers, device, mean, lighting):
    import pipeline

    loader = pipeline.build_loader(data, "train", batch_size=batch_size, crop=crop, device=device,
                                   mean=mean, lighting=lighting, flip=True, num_threads=workers)

    def epoch_iter(epoch):
        loader.set_epoch(epoch)
        return iter(loader)
    return _cycle(epoch_iter).__next__


def _ffcv(beton, batch_size, crop, size, stats, workers):
    import torch
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    scale = (crop / size) ** 2  # area fraction of a crop x crop window: no resize happens
    # NormalizeImage goes before ToTensor: on the CPU it is a compiled (numba) stage, and a compiled
    # stage after ToTensor's plain one makes FFCV 1.0.2's Loader hang in Graph.group_operations
    # (libffcv/ffcv#350, #396). Here it maps uint8 HWC to float32 HWC through a lookup table.
    image = [RandomResizedCropRGBImageDecoder((crop, crop), scale=(scale, scale), ratio=(1, 1)),
             RandomHorizontalFlip(), NormalizeImage(stats["channel_mean"], stats["channel_std"], np.float32),
             ToTensor(), ToTorchImage()]
    label = [IntDecoder(), ToTensor(), Squeeze()]
    loader = Loader(str(beton), batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM,
                    os_cache=True, drop_last=True, seed=0, pipelines={"image": image, "label": label})

    def epoch_iter(epoch):
        # ToTorchImage returns an NCHW view of NHWC memory (channels_last): copy to contiguous NCHW
        # like the other systems deliver; this copy is part of the timing.
        return ((x.contiguous(memory_format=torch.contiguous_format), y) for x, y in loader)
    return _cycle(epoch_iter).__next__


class OriginalJPEGs:
    """torchvision-style training transforms over the source files, in PIL and torch only:
    Resize(size) (short side, bilinear), RandomCrop(crop), RandomHorizontalFlip, ToTensor, Normalize."""

    def __init__(self, src: Path, items, size: int, crop: int, mean, std):
        import torch

        self.src, self.items, self.size, self.crop = src, items, size, crop
        self.mean = torch.tensor(mean / 255, dtype=torch.float32)[:, None, None]  # 0..1 units
        self.std = torch.tensor(std / 255, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        import torch
        from PIL import Image

        item = self.items[i]
        img = Image.open(io.BytesIO(read_bytes(self.src, item.locator))).convert("RGB")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.size * long / short)  # torchvision truncates the long side
        img = img.resize((self.size, new_long) if w <= h else (new_long, self.size), Image.BILINEAR)
        top = int(torch.randint(0, img.height - self.crop + 1, ()))
        left = int(torch.randint(0, img.width - self.crop + 1, ()))
        img = img.crop((left, top, left + self.crop, top + self.crop))
        if torch.rand(()) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)  # ToTensor: CHW 0..1
        return x.sub_(self.mean).div_(self.std), item.label


def _torch(source, batch_size, crop, size, stats, workers):
    import torch

    items = detect(source).splits["train"]
    dataset = OriginalJPEGs(source, items, size, crop, stats["channel_mean"], stats["channel_std"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=True)
    return _cycle(lambda epoch: iter(loader)).__next__


def _check_batch(system, images, labels, batch_size, crop, device, per_channel: bool):
    """Every system must deliver the same kind of batch, or the comparison means nothing."""
    import torch

    want = (batch_size, 3, crop, crop)
    if tuple(images.shape) != want or images.dtype != torch.float32 or not images.is_contiguous() \
            or images.device.type != device or tuple(labels.shape) != (batch_size,) \
            or labels.dtype != torch.int64:
        raise AssertionError(f"{system}: images {tuple(images.shape)} {images.dtype} contiguous="
                             f"{images.is_contiguous()} on {images.device}, labels {tuple(labels.shape)} "
                             f"{labels.dtype}; expected {want} float32 contiguous NCHW on {device}, "
                             f"labels ({batch_size},) int64")
    if per_channel:  # (x - mean) / std over the dataset: a batch has mean ~0 and std ~1 per channel
        mean, std = images.mean((0, 2, 3)), images.std((0, 2, 3))
        if not (mean.abs() < 1).all() or not ((std > 0.3) & (std < 3)).all():
            raise AssertionError(f"{system}: per-channel batch mean {mean.tolist()}, std {std.tolist()}: "
                                 f"not normalised with the dataset's channel mean and std")


# -- data ------------------------------------------------------------------------------------------

def _prepare_data(root: Path, images: int, size: int, quick: bool) -> tuple[Path, Path]:
    """A generated photo tree under root/src converted at ``size`` px to root/data; reused when
    root/data holds a finished conversion of that size and image count."""
    src, data = root / "src", root / "data"
    classes = 4 if quick else 10
    train = max(1, images // classes)
    if (data / "manifest.json").exists() and src.exists():
        ds = open_dataset(data)
        if ds.size == size and len(ds["train"]) == classes * train:
            return src, data
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    synthetic.make_imagefolder(src, n_classes=classes, train_per_class=train, val_per_class=1,
                               sizes=QUICK_SIZES if quick else synthetic.PHOTO_SIZES)
    convert(src, data, size=size, workers=os.cpu_count() or 1, progress=False)
    return src, data


def _beton(data: Path, root: Path) -> Path:
    """The train split as .beton under ``root``, named after the dataset's manifest (whose shard
    checksums identify the data), so a cached export is reused only for the same data."""
    from tools.export_ffcv import export_beton

    out = root / f"train-{hashlib.sha256((data / 'manifest.json').read_bytes()).hexdigest()[:16]}.beton"
    if out.exists():
        return out
    partial = export_beton(data, "train", out.with_suffix(".partial"), overwrite=True)  # a crashed run's leftover
    return partial.replace(out)  # only a finished export gets the name that is reused


def _ratios(rows: list[dict]) -> None:
    by = {r["system"]: r["images_per_s"] for r in rows}
    for r in rows:
        if r["system"].startswith("dali"):
            r["ratio_vs_ffcv"] = r["images_per_s"] / by["ffcv"] if "ffcv" in by else None
            r["ratio_vs_torch"] = (r["images_per_s"] / by["torch-dataloader"]
                                   if "torch-dataloader" in by else None)


def loader(data: str | None = None, source: str | None = None, json: str = "bench_out/loader.json",
           batch_size: int | None = None, crop: int | None = None, steps: int | None = None,
           seconds: float | None = None, repeats: int | None = None, images: int | None = None,
           cache: str | None = None, quick: bool = False):
    """Loader images/s: DALI (GPU if present, CPU) vs FFCV's Loader vs a torch DataLoader.

    data: a dataset from tools/prepare_imagenet.py (default: generate and convert one)
    source: the original images DATA was converted from, for the torch DataLoader (needs --data)
    json: where to write the results (JSON; a Markdown table and a PNG chart go beside it)
    batch_size: images per batch (default: 256, or 32 with --quick)
    crop: side of the random crop in pixels (default: 224, or 56 with --quick)
    steps: batches per timed run (default: as many as fit in --seconds)
    seconds: target length of a timed run in seconds (default: 10, or 0.5 with --quick)
    repeats: timed runs per system (default: 3, or 1 with --quick)
    images: how many images to generate without --data
    cache: a folder to keep generated data and .beton exports in between runs (default: a temp dir)
    quick: a smoke test: small generated data, short runs
    """
    import torch

    batch_size = batch_size or (32 if quick else 256)
    crop = crop or (56 if quick else 224)
    repeats = repeats or (1 if quick else 3)
    seconds = seconds or (0.5 if quick else 10.0)
    warmup_s = 0.2 if quick else 3.0
    workers = len(os.sched_getaffinity(0))
    for name, value in (("batch_size", batch_size), ("crop", crop), ("repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise UsageError(f"--steps must be a positive integer, got {steps!r}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    root = Path(cache) if cache else tmp
    try:
        if data is None:
            if source is not None:
                raise UsageError("--source needs --data (the same images converted)")
            size = 64 if quick else 256
            images = images or (96 if quick else max(500, 10 * batch_size))  # >= 10 steps an epoch
            source, data = _prepare_data(root, images, size, quick)
            described = (f"generated by tools.synthetic ({'tiny' if quick else 'photo'} sizes, quality "
                         f"90), converted at {size} px raw")
        else:
            described = str(Path(data).resolve())
        data = Path(data)
        ds = open_dataset(data)
        n_train = len(ds["train"])
        if n_train < batch_size:
            raise UsageError(f"{data}: {n_train} train samples make no batch of {batch_size}")
        env = bench.environment()
        config = {"data": described, "size": ds.size, "encoding": ds.encoding, "n_train": n_train,
                  "steps_per_epoch": n_train // batch_size, "dtype": "float32", "layout": "NCHW",
                  "mean": "channel", "flip": True, "workers": workers, "warmup_s": warmup_s,
                  "target_run_s": None if steps else seconds, "quick": quick}
        cuda = torch.cuda.is_available()

        makers, skipped = {}, {}
        if cuda:
            makers["dali-gpu"] = (lambda: _dali(data, batch_size, crop, workers, "cuda", "channel", 0.0),
                                  "cuda", "external_source + crop_mirror_normalize on the GPU")
        else:
            skipped["dali-gpu"] = "not measured (no GPU)"
        makers["dali-cpu"] = (lambda: _dali(data, batch_size, crop, workers, "cpu", "channel", 0.0), "cpu",
                              "external_source + crop_mirror_normalize, DALI CPU threads")
        makers["dali-cpu+lighting"] = (
            lambda: _dali(data, batch_size, crop, workers, "cpu", "pixel", 0.1), "cpu",
            "full AlexNet augmentation: mean image + PCA lighting (only ours has it)")
        try:
            from tools.export_ffcv import require_ffcv
            require_ffcv()
            beton = _beton(data, root)
            makers["ffcv"] = (lambda: _ffcv(beton, batch_size, crop, ds.size, ds.stats, workers), "cpu",
                              "numba pipeline; channels_last -> NCHW copy timed")
        except ImportError as e:
            skipped["ffcv"] = f"not measured ({e})"
        if source is not None:
            makers["torch-dataloader"] = (
                lambda: _torch(Path(source), batch_size, crop, ds.size, ds.stats, workers), "cpu",
                "Pillow decode + resize of the original JPEGs in worker processes")
        else:
            skipped["torch-dataloader"] = "not measured (no --source)"

        rows = []
        # The DataLoader forks its workers: do it first, before DALI and FFCV have started threads.
        for system in sorted(makers, key=lambda s: s != "torch-dataloader"):
            make, device, note = makers[system]
            print(f"{system}: warming up", file=sys.stderr, flush=True)
            next_batch = make()
            images_, labels = next_batch()
            _check_batch(system, images_, labels, batch_size, crop, device,
                         per_channel=system != "dali-cpu+lighting")
            del images_, labels
            synced = (lambda: (next_batch(), torch.cuda.synchronize())) if device == "cuda" else next_batch
            warm_up(synced, 12, warmup_s)
            runs = time_steps(next_batch, repeats, steps, seconds, cuda=device == "cuda",
                              retries=0 if quick else 2 * repeats)
            rows.append(rate_row("loader", system, runs, batch_size, workers, crop=crop,
                                 output_device=device, note=note, config=config, **env))
            del next_batch  # ends the system's threads / worker processes before the next one
            gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    _ratios(rows)
    rows.sort(key=lambda r: SYSTEMS.index(r["system"]))
    _report(rows, skipped, json, f"loader: {n_train} train images at {ds.size} px -> {crop} crop, "
                                 f"batch {batch_size}, {repeats} repeats")


def _report(rows: list[dict], skipped: dict, json_path, title: str) -> None:
    """bench.report, with the systems that were not measured listed in the table (not in the rows:
    every JSON row is a measurement) and under "not_measured" in the JSON."""
    import json

    env = {k: rows[0][k] for k in ("date", "device", "versions")}  # report's header reads row 0
    shown = rows + [{"system": s, "note": why, "skipped": why, **env} for s, why in skipped.items()]
    shown.sort(key=lambda r: SYSTEMS.index(r["system"]))
    bench.report(shown, json_path, LOADER_COLUMNS, {"images_per_s": "images/s"}, "images/s", title)
    path = Path(json_path)
    path.write_text(json.dumps({"rows": rows, "not_measured": skipped}, indent=1) + "\n")
