"""loader: images/s of training batches, our DALI pipeline vs FFCV's Loader vs a torch DataLoader.

    python tools/benchmark.py loader [--data=DATASET] [--source=ORIGINAL_DIR] [--batch_size=256]
        [--crop=224] [--steps=N] [--seconds=10] [--repeats=3] [--images=N] [--cache=DIR]
        [--json=bench_out/loader.json] [--redo=N] [--extras=False] [--quick]

Every system delivers the same thing: float32 NCHW (contiguous) batches of ``batch_size`` random
crop x crop windows, mirrored with p = 0.5, normalised with the dataset's per-channel mean and std
(our ``mean="channel"``), with int64 labels; the first batch of each is checked for that.

    dali-gpu           pipeline.build_loader(device="cuda"): only with CUDA, timed with CUDA events
    dali-cpu           pipeline.build_loader(device="cpu", mean="channel", lighting=0): raw, the
                       gatherer copies each window, mirrored, and DALI normalises the batch as
                       a few sequences; JPEG, DALI decodes each window alone (gather.py, graphs.py)
    dali-cpu+lighting  the full AlexNet augmentation: mean="pixel" (mean image), PCA lighting 0.1
    ffcv               ffcv.loader.Loader over the train split exported to .beton (export not timed):
                       RandomResizedCrop with scale = (crop/size)^2 and ratio 1 (a plain random crop),
                       flip, NormalizeImage, ToTensor, ToTorchImage; its channels_last output is made
                       NCHW-contiguous with .contiguous(), and that copy is timed
    torch-dataloader   torch DataLoader over the ORIGINAL JPEGs (needs --source): Pillow decode, resize
                       the short side to the dataset size (bilinear), random crop, flip, /255, normalise

Further figures, in a second table ("extras"), same run, same data:

    ffcv-channels-last FFCV's native output (NCHW view of NHWC memory), without the copy above
    dali-cpu-channels-last  dali-cpu with channels_last=True: the same layout as FFCV's native output
                       (crop_mirror_normalize writes HWC; NCHW view of it), like for like with the row above
    dali-feed          the feed alone: our gather into the reused buffers and DALI's hand-off of
                       the stored uint8 (B, S, S, 3) batch, read in place as training reads it; the
                       graph outputs only the samples' shapes (tools/bench/graphs.py handoff_pipeline); also at a
                       quarter of the batch, to show Python cost per batch not growing
    dali-cpu-quarter, dali-cpu-x4  dali-cpu at a quarter and at 4 times the batch: the training
                       thread's time a batch (py us/batch, median and mean) against the batch size
    dali-feed+copy-out the same with the uint8 batch as the graph's output (feed_pipeline): DALI
                       copies it out of the ring, a copy training does not make
    numpy-copy         a plain numpy copy of the same bytes: a random batch's records copied one
                       by one (np.copyto) into a reused buffer, in the same number of threads

Every row also carries: GB/s of the images delivered (uint8 source bytes for the feed rows),
the Python (main-thread CPU) microseconds per batch and per sample, the first batch of an epoch
over the median batch (an epoch boundary), and the process's resident memory (anonymous and
file-backed, MB) after the first and the last epoch.

Each system runs in its own process (``python -m tools.bench.loader``), so that a crash or an
abort at teardown costs its row (listed as not measured, with the exit status and the last
line it printed), never the run. Workers: one per usable core for every system (DALI threads,
FFCV threads, DataLoader processes).
Without --data it generates photo-size JPEGs (tools.synthetic) and converts them, which gives
both --source and --data (kept under --cache if given, else deleted). Timing per system: a warm-up
of at least 12 batches and 3 s (FFCV compiles its pipeline here), then --repeats runs, each of
--steps batches or as many as fit in --seconds (at most 100,000); the median of the runs' images/s
is reported. CPU seconds include worker processes; "others busy" is the cores that the rest of the
machine used meanwhile: a run with > 0.25 is redone after a wait for quiet (at most 2 x repeats
times; "redone" counts them), so that a shared machine does not decide the comparison.
--redo=N caps those redone runs (0 on a machine that is never quiet: "others busy" then tells).
--extras=False leaves out the second table (--quick leaves it out unless --extras=True).
--quick: 64 px data, crop 56, batch 32, ~0.5 s runs (a smoke test, not a figure).
"""
from __future__ import annotations

import gc
import hashlib
import io
import json as jsonlib
import os
import shutil
import statistics
import subprocess
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
                  ("x torch", "ratio_vs_torch", ".2f"), ("GB/s", "gb_per_s", ".2f"),
                  ("py us/batch", "python_us_per_batch", ".0f"), ("py us/batch mean", "python_us_per_batch_mean", ".0f"),
                  ("py us/sample", "python_us_per_sample", ".2f"),
                  ("epoch start / batch", "epoch_start_over_median", ".2f"),
                  ("anon MB first, last epoch", "rss_anon_mb", "s"), ("note", "note", "s")]
SYSTEMS = ("dali-gpu", "dali-cpu", "dali-cpu+lighting", "ffcv", "torch-dataloader")  # table order
EXTRAS = ("ffcv-channels-last", "dali-cpu-channels-last", "dali-cpu-quarter", "dali-cpu-x4", "dali-feed",
          "dali-feed-quarter", "dali-feed+copy-out", "numpy-copy")
OTHER_BATCH = {"dali-cpu-quarter": 0.25, "dali-cpu-x4": 4, "dali-feed-quarter": 0.25}  # x the batch
ROOT = Path(__file__).resolve().parents[2]
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

class Tracker:
    """Per batch: wall time and main-thread CPU time (the Python cost on the training thread);
    per epoch: resident memory at its end. ``epoch`` counts the epochs started."""

    def __init__(self):
        self.epoch, self.batches, self.rss = 0, [], []

    def step(self, batches):
        """``next_batch()`` over the generator ``batches``, recording each call."""
        def next_batch():
            epoch, t, cpu = self.epoch, time.perf_counter(), time.thread_time()
            batch = next(batches)
            self.batches.append((self.epoch != epoch, time.perf_counter() - t, time.thread_time() - cpu))
            return batch
        return next_batch

    def summary(self, batch_size: int) -> dict:
        med = statistics.median
        steady = [dt for first, dt, _ in self.batches if not first]
        starts = [dt for first, dt, _ in self.batches[1:] if first]  # the very first is start-up
        python_s = med(cpu for _, _, cpu in self.batches)
        mean_s = statistics.fmean(cpu for _, _, cpu in self.batches[1:]) if len(self.batches) > 1 else None
        rss = [self.rss[0], self.rss[-1]] if self.rss else []
        # the mean also counts what happens once an epoch (its planning, its first batches)
        return {"python_us_per_batch": python_s * 1e6,
                "python_us_per_batch_mean": mean_s * 1e6 if mean_s is not None else None,
                "python_us_per_sample": python_s * 1e6 / batch_size,
                "epoch_start_over_median": med(starts) / med(steady) if starts and steady else None,
                "epochs": self.epoch, "rss_mb_by_epoch": self.rss,
                "rss_anon_mb": f"{rss[0]['anon']:.0f}, {rss[1]['anon']:.0f}" if rss else None,
                "rss_file_mb": f"{rss[0]['file']:.0f}, {rss[1]['file']:.0f}" if rss else None}


def _rss_mb() -> dict:
    """This process's resident memory: anonymous (heap, buffers) and file-backed (mapped shards
    in the page cache, which the kernel may drop), MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key[3:].lower()] = int(value.split()[0]) / 1024
    return out


def _cycle(epoch_iter, tracker: Tracker):
    """Batches forever: ``epoch_iter(epoch)`` gives one epoch's iterator."""
    while True:
        got = False
        for batch in epoch_iter(tracker.epoch):
            got = True
            yield batch
        if not got:
            raise ValueError("an epoch yielded no batch: fewer train samples than one batch")
        tracker.rss.append(_rss_mb())
        tracker.epoch += 1


def _dali(data, batch_size, crop, workers, device, mean, lighting, tracker, graph=None, channels_last=False):
    from pipeline.load.loader import Loader

    loader = Loader(data, "train", batch_size=batch_size, crop=crop, device=device, mean=mean,
                    lighting=lighting, flip=True, num_threads=workers, graph=graph,
                    channels_last=channels_last)

    def epoch_iter(epoch):
        loader.set_epoch(epoch)
        return iter(loader)
    return tracker.step(_cycle(epoch_iter, tracker))


def _numpy_copy(data, batch_size, workers, tracker):
    """The same bytes per batch as the feed: a random batch's records, each copied by numpy
    (``np.copyto`` of one record, a Python loop) from the shard mappings into one reused buffer,
    the batch split over ``workers`` threads, as the feed splits it."""
    from concurrent.futures import ThreadPoolExecutor

    split = open_dataset(data)["train"]
    records = [np.asarray(s.payload) for s in split.shards]
    out = np.empty((batch_size,) + records[0].shape[1:], np.uint8)
    pool = ThreadPoolExecutor(workers)
    cuts = np.linspace(0, batch_size, workers + 1).astype(int)
    rng = np.random.default_rng(0)
    steps = len(split) // batch_size

    def copy(shard, row, a, b):
        for i in range(a, b):
            np.copyto(out[i], records[shard[i]][row[i]])

    def epoch_iter(epoch):
        for _ in range(steps):
            shard, row = split.locate_many(rng.permutation(len(split))[:batch_size])
            jobs = [pool.submit(copy, shard, row, a, b) for a, b in zip(cuts[:-1], cuts[1:])]
            for job in jobs:
                job.result()
            yield out, None
    return tracker.step(_cycle(epoch_iter, tracker))


def _ffcv(beton, batch_size, crop, size, stats, workers, tracker, native=False):
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
        if native:
            return iter(loader)  # NCHW view of NHWC memory: channels_last, as FFCV delivers it
        # Made contiguous NCHW like the other systems deliver; this copy is part of the timing.
        return ((x.contiguous(memory_format=torch.contiguous_format), y) for x, y in loader)
    return tracker.step(_cycle(epoch_iter, tracker))


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


def _torch(source, batch_size, crop, size, stats, workers, tracker):
    import torch

    items = detect(source).splits["train"]
    dataset = OriginalJPEGs(source, items, size, crop, stats["channel_mean"], stats["channel_std"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=True)
    return tracker.step(_cycle(lambda epoch: iter(loader), tracker))


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


def _beton(data: Path, root: Path, ffcv_source: Path | None = None) -> Path:
    """The train split as .beton under ``root``, named after the dataset's manifest (whose shard
    checksums identify the data), so a cached export is reused only for the same data. A JPEG
    dataset gets FFCV's JPEG mode at the same quality, encoded from ``ffcv_source`` (the raw
    dataset converted from the same inputs: the pixels our JPEG shards encoded) if given, else
    from the decoded JPEG shards (encoded twice then)."""
    from tools.export_ffcv import export_beton

    manifest = jsonlib.loads((data / "manifest.json").read_text())
    jpeg = manifest["encoding"] == "jpeg"
    source = ffcv_source if jpeg and ffcv_source else data
    tag = hashlib.sha256((source / "manifest.json").read_bytes()).hexdigest()[:16]
    out = root / (f"train-{tag}-jpg{manifest['quality']}.beton" if jpeg else f"train-{tag}.beton")
    if out.exists():
        return out
    mode = dict(write_mode="jpg", quality=int(manifest["quality"])) if jpeg else {}
    partial = export_beton(source, "train", out.with_suffix(".partial"), overwrite=True, **mode)  # a crashed run's leftover
    return partial.replace(out)  # only a finished export gets the name that is reused


def _ratios(rows: list[dict]) -> None:
    by = {r["system"]: r["images_per_s"] for r in rows}
    for r in rows:
        if r["system"].startswith("dali"):
            r["ratio_vs_ffcv"] = r["images_per_s"] / by["ffcv"] if "ffcv" in by else None
            r["ratio_vs_torch"] = (r["images_per_s"] / by["torch-dataloader"]
                                   if "torch-dataloader" in by else None)


def _extra_ratios(extras: list[dict], rows: list[dict]) -> None:
    """The dali rows against FFCV's native layout; the feed rows against the numpy copy."""
    by = {r["system"]: r for r in rows + extras}
    native, copy = by.get("ffcv-channels-last"), by.get("numpy-copy")
    for r in rows + extras:
        if (r["system"].startswith("dali") and not r["system"].startswith("dali-feed") and native
                and r["system"] not in OTHER_BATCH):
            r["ratio_vs_ffcv_channels_last"] = r["images_per_s"] / native["images_per_s"]
    for r in extras:
        if r["system"].startswith("dali-feed") and copy:
            r["ratio_vs_numpy_copy"] = r["gb_per_s"] / copy["gb_per_s"]


# -- one system, in its own process -----------------------------------------------------------------

def _measure(spec: dict) -> dict:
    """Build ``spec["system"]``, check its first batch, warm up, time it: one row."""
    import torch

    system, data, b, crop, workers = (spec[k] for k in ("system", "data", "batch_size", "crop", "workers"))
    ds = open_dataset(data)
    tracker = Tracker()
    feed = system.startswith("dali-feed") or system == "numpy-copy"
    b = max(1, int(b * OTHER_BATCH.get(system, 1)))
    if system in ("dali-gpu", "dali-cpu", "dali-cpu-quarter", "dali-cpu-x4"):
        next_batch = _dali(data, b, crop, workers, "cuda" if system == "dali-gpu" else "cpu", "channel",
                           0.0, tracker)
    elif system == "dali-cpu-channels-last":
        next_batch = _dali(data, b, crop, workers, "cpu", "channel", 0.0, tracker, channels_last=True)
    elif system == "dali-cpu+lighting":
        next_batch = _dali(data, b, crop, workers, "cpu", "pixel", 0.1, tracker)
    elif system.startswith("dali-feed"):
        from tools.bench import graphs
        next_batch = _dali(data, b, ds.size, workers, "cpu", "none", 0.0, tracker,
                           graph=graphs.feed_pipeline if system == "dali-feed+copy-out" else graphs.handoff_pipeline)
    elif system == "numpy-copy":
        next_batch = _numpy_copy(data, b, workers, tracker)
    elif system in ("ffcv", "ffcv-channels-last"):
        next_batch = _ffcv(spec["beton"], b, crop, ds.size, ds.stats, workers, tracker,
                           native=system == "ffcv-channels-last")
    elif system == "torch-dataloader":
        next_batch = _torch(Path(spec["source"]), b, crop, ds.size, ds.stats, workers, tracker)
    else:
        raise ValueError(f"unknown system {system!r}")
    device = "cuda" if system == "dali-gpu" else "cpu"
    images, labels = next_batch()
    if system in ("dali-feed", "dali-feed-quarter"):  # the shapes of what was handed to DALI
        if tuple(images.shape) != (b, 3) or not (images == torch.tensor([ds.size, ds.size, 3])).all():
            raise AssertionError(f"{system}: fed shapes {images[:2].tolist()}..., expected {b} x "
                                 f"{[ds.size, ds.size, 3]}")
    elif feed:
        want = (b, ds.size, ds.size, 3)
        if tuple(images.shape) != want or images.dtype not in (torch.uint8, np.uint8):
            raise AssertionError(f"{system}: {tuple(images.shape)} {images.dtype}, expected {want} uint8")
    elif system in ("ffcv-channels-last", "dali-cpu-channels-last"):
        if not images.is_contiguous(memory_format=torch.channels_last):
            raise AssertionError(f"{system}: not channels_last (strides {images.stride()})")
        _check_batch(system, images.contiguous(), labels, b, crop, device, per_channel=True)
    else:
        _check_batch(system, images, labels, b, crop, device, per_channel=system != "dali-cpu+lighting")
    bytes_per_image = ds.size * ds.size * 3 if feed else images[0].numel() * images.element_size()
    del images, labels
    synced = (lambda: (next_batch(), torch.cuda.synchronize())) if device == "cuda" else next_batch
    warm_up(synced, 12, spec["warmup_s"])
    runs = time_steps(next_batch, spec["repeats"], spec["steps"], spec["seconds"], cuda=device == "cuda",
                      retries=spec["redo"])
    row = rate_row("loader", system, runs, b, workers, crop=ds.size if feed else crop,
                   output_device=device, note=spec["note"], config=spec["config"], **spec["env"])
    row["gb_per_s"] = row["images_per_s"] * bytes_per_image / 1e9
    row.update(tracker.summary(b))
    return row


def _run_child(spec: dict, timeout: float, module: str = "tools.bench.loader"
               ) -> tuple[dict | None, str | None]:
    """(row, None), or (None, why) when the child crashed, aborted or timed out before its row
    was written; a row written before a crash at teardown is kept, with a note."""
    with tempfile.TemporaryDirectory(prefix="bench-loader-child-") as tmp:
        out = Path(tmp) / "row.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        # faulthandler: a child that aborts (SIGABRT) prints every thread's Python stack first
        cmd = [sys.executable, "-X", "faulthandler", "-m", module, jsonlib.dumps(spec), str(out)]
        try:
            proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=timeout, env=env,
                                  cwd=ROOT)
        except subprocess.TimeoutExpired:
            return None, f"not measured (timed out after {timeout:.0f} s)"
        sys.stderr.write(proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if not out.exists():  # the child writes its row whole (a rename) once it is measured
            # an abort: what the process said last before faulthandler's stack dump
            fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
            last = "; ".join(lines[max(0, fatal - 1):fatal + 1]) if fatal is not None else \
                lines[-1] if lines else "no output"
            return None, f"not measured (crashed, exit status {proc.returncode}: {last[:200]})"
        row = jsonlib.loads(out.read_text())
        if proc.returncode != 0 or any("terminate called" in line for line in lines):
            # measured, then the process died at its teardown (its threads': the row stands)
            row["note"] += f"; aborted at teardown (exit status {proc.returncode})"
        return row, None


def loader(data: str | None = None, source: str | None = None, json: str = "bench_out/loader.json",
           batch_size: int | None = None, crop: int | None = None, steps: int | None = None,
           seconds: float | None = None, repeats: int | None = None, images: int | None = None,
           cache: str | None = None, quick: bool = False, extras: bool | None = None,
           redo: int | None = None, ffcv_source: str | None = None):
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
    extras: the second table (FFCV's native layout, the feed alone, a numpy copy); default: not with --quick
    redo: at most this many runs redone when other work used the machine (default: 2 x repeats, 0 with --quick)
    ffcv_source: with a JPEG --data, the raw dataset converted from the same inputs: FFCV's JPEG mode
        encodes its pixels at --data's quality (default: the decoded JPEG shards, encoded again)
    """
    import torch

    from pipeline.store import is_url
    if data is not None and is_url(data):
        raise UsageError(f"--data={data}: a bucket's dataset is measured by `tools/benchmark.py store "
                         f"--data=LOCAL_DATASET` (the same loader on s3:// cold and warm beside the local "
                         f"directory, against a SeaweedFS it starts or --endpoint)")
    batch_size = batch_size or (32 if quick else 256)
    crop = crop or (56 if quick else 224)
    repeats = repeats or (1 if quick else 3)
    seconds = seconds or (0.5 if quick else 10.0)
    warmup_s = 0.2 if quick else 3.0
    extras = not quick if extras is None else extras
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
        notes, skipped = {}, {}
        if torch.cuda.is_available():
            notes["dali-gpu"] = "windows cut by the gather (raw) or decoded alone (JPEG), normalised on the GPU"
        else:
            skipped["dali-gpu"] = "not measured (no GPU)"
        notes["dali-cpu"] = "windows cut by the gather (raw) or decoded alone (JPEG), normalised by DALI's CPU threads"
        notes["dali-cpu+lighting"] = "full AlexNet augmentation: mean image + PCA lighting (only ours has it)"
        beton = None
        try:
            from tools.export_ffcv import require_ffcv
            require_ffcv()
            beton = _beton(data, root, Path(ffcv_source) if ffcv_source else None)
            notes["ffcv"] = "numba pipeline; channels_last -> NCHW copy timed"
            if ds.encoding == "jpeg":
                q = ds.manifest["quality"]
                notes["ffcv"] += (f"; FFCV's JPEG mode, quality {q}, encoded from "
                                  + (f"{ffcv_source} (the same pixels)" if ffcv_source else "our decoded JPEGs"))
        except ImportError as e:
            skipped["ffcv"] = f"not measured ({e})"
        if source is not None:
            notes["torch-dataloader"] = "Pillow decode + resize of the original JPEGs in worker processes"
        else:
            skipped["torch-dataloader"] = "not measured (no --source)"
        if extras:
            if beton is not None:
                notes["ffcv-channels-last"] = "FFCV's native output: NCHW view of NHWC memory, no copy"
            notes["dali-cpu-channels-last"] = "dali-cpu, channels_last=True: FFCV's native layout"
            notes["dali-cpu-quarter"] = f"dali-cpu at batch {max(1, batch_size // 4)}: Python a batch vs the batch size"
            if n_train >= 8 * batch_size:  # two steps an epoch at least
                notes["dali-cpu-x4"] = f"dali-cpu at batch {batch_size * 4}: Python a batch vs the batch size"
            if ds.encoding == "raw":
                notes["dali-feed"] = ("gather into the reused buffers + DALI hand-off, uint8, read in "
                                      "place, no augmentation (outputs the shapes)")
                notes["dali-feed-quarter"] = f"the same at batch {max(1, batch_size // 4)}"
                notes["dali-feed+copy-out"] = "dali-feed with the uint8 batch as DALI's output (copied out)"
                notes["numpy-copy"] = "np.copyto of each record of a random batch, same threads"

        rows, extra_rows = [], []
        base = dict(data=str(data), beton=str(beton) if beton else None, source=str(source) if source else None,
                    batch_size=batch_size, crop=crop, workers=workers, steps=steps, seconds=seconds,
                    repeats=repeats, warmup_s=warmup_s, quick=quick, config=config, env=env,
                    redo=(0 if quick else 2 * repeats) if redo is None else redo)
        # a guard against hangs, not a limit on speed: a wait for quiet included, and FFCV compiles
        # its pipeline with numba in every new process (over a minute on a loaded 2-core machine)
        budget = 180 + (warmup_s + (4 * repeats + 1) * seconds) * 4
        for system in [s for s in SYSTEMS + EXTRAS if s in notes]:
            print(f"{system}: warming up (own process)", file=sys.stderr, flush=True)
            row, why = _run_child(dict(base, system=system, note=notes[system]), budget)
            if row is None:
                skipped[system] = why
                print(f"{system}: {why}", file=sys.stderr, flush=True)
            else:
                (rows if system in SYSTEMS else extra_rows).append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    _ratios(rows)
    _extra_ratios(extra_rows, rows)
    rows.sort(key=lambda r: SYSTEMS.index(r["system"]))
    _report(rows, extra_rows, skipped, json, f"loader: {n_train} train images at {ds.size} px -> {crop} crop, "
                                             f"batch {batch_size}, {repeats} repeats")


EXTRA_COLUMNS = [c for c in LOADER_COLUMNS if c[1] not in ("ratio_vs_ffcv", "ratio_vs_torch")]
EXTRA_COLUMNS.insert(-1, ("x numpy copy (GB/s)", "ratio_vs_numpy_copy", ".2f"))


def _shown(rows: list[dict], skipped: dict, env: dict) -> list[dict]:
    """The main table's rows: the measured ones and the main systems not measured, in SYSTEMS order."""
    shown = rows + [{"system": s, "note": why, "skipped": why, **env} for s, why in skipped.items()
                    if s in SYSTEMS]
    return sorted(shown, key=lambda r: SYSTEMS.index(r["system"]))


def _extras_table(extras: list[dict], skipped: dict) -> str:
    """The second table (empty string without extras)."""
    extra_skipped = [{"system": s, "note": why} for s, why in skipped.items() if s not in SYSTEMS]
    if not extras and not extra_skipped:
        return ""
    return ("extras (same run, same data): FFCV's native layout, the feed alone, a numpy copy\n\n" +
            bench.markdown_table(extras + extra_skipped, EXTRA_COLUMNS))


def tables(saved: dict) -> str:
    """The tables a loader run printed, again, from its JSON (tools/benchmark.py table)."""
    skipped = saved.get("not_measured", {})
    text = bench.markdown_table(_shown(saved["rows"], skipped, {}), LOADER_COLUMNS)
    extra = _extras_table(saved.get("extras", []), skipped)
    return text + ("\n\n" + extra if extra else "")


def _report(rows: list[dict], extras: list[dict], skipped: dict, json_path, title: str) -> None:
    """bench.report, with the systems that were not measured listed in the table (not in the rows:
    every JSON row is a measurement) and under "not_measured" in the JSON; the extra systems
    in a second table and under "extras"."""
    env = bench.environment() if not rows else {k: rows[0][k] for k in ("date", "device", "versions")}
    bench.report(_shown(rows, skipped, env), json_path, LOADER_COLUMNS, {"images_per_s": "images/s"},
                 "images/s", title)
    extra = _extras_table(extras, skipped)
    if extra:
        print("\n" + extra)
        if any("ratio_vs_ffcv_channels_last" in r for r in rows + extras):
            print("\n" + "\n".join(f"{r['system']}: {r['ratio_vs_ffcv_channels_last']:.2f}x FFCV channels_last"
                                   for r in rows + extras if "ratio_vs_ffcv_channels_last" in r))
    Path(json_path).write_text(jsonlib.dumps({"rows": rows, "extras": extras, "not_measured": skipped},
                                             indent=1) + "\n")


if __name__ == "__main__":
    # python -m tools.bench.loader SPEC_JSON OUT_JSON: one system, one row (run by loader())
    row = _measure(jsonlib.loads(sys.argv[1]))
    partial = Path(sys.argv[2] + ".partial")
    partial.write_text(jsonlib.dumps(row))
    partial.replace(sys.argv[2])  # whole or absent, whatever happens at teardown
    print("bench child: row written", file=sys.stderr, flush=True)
