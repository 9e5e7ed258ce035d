"""Benchmarks of the data flow in DESIGN.md against peers; one subcommand per arrow.

    python tools/benchmark.py prepare [--source=DIR] [--json=bench_out/prepare.json] [--quick]
        [--workers=1] [--repeats=3] [--images=200]

prepare: images/s per core of converting the same JPEGs to 256 px by
    ours         pipeline.prepare.convert.convert (decode with draft, crop box only, bicubic, shards, stats)
    ffcv-writer  FFCV's DatasetWriter, RGBImageField(raw, max_resolution=256) over PIL images
    pillow-loop  open, RGB, resize short side to 256 (bicubic, whole image), centre crop
    decode-only  Pillow's JPEG decode with ours' DCT scaling rule, nothing else: the issue-14 ceiling
    decode-rgb   ours' decode stage alone (simplejpeg for plain JPEGs, Pillow for the rest, to an
                 RGB array): ours' own floor
    preprocess   ours without shards, stats or checksums (to_rgb_square, arrays discarded)
    torch-aa-u8  candidate resampler: the same decode, then torch's uint8 antialiased bicubic
                 interpolate over the centre box rounded to whole pixels (torch has no sub-pixel box)
Without --source it generates --images photo-size JPEGs (500x375 .. 1024x768, quality 90).
--quick: 24 images and 1 repeat (a smoke test); the default is 1 warm-up + 3 timed repeats.
Each system also converts every tenth input: the difference gives its fixed cost per
run and its marginal rate, the figure that decides a full ImageNet conversion.
SRC is converted 2 x (1 warm-up + repeats) times per system: give a small tree, not all of ImageNet.
Each run prints a Markdown table and writes JSON + a PNG chart; record results in BENCHMARKS.md.

    python tools/benchmark.py loader [--data=DATASET --source=DIR] [--batch_size=256] [--crop=224] [--quick]
    python tools/benchmark.py model [--model=alexnet[,alexnet_owt]] [--precision=fp32[,bf16]] [--quick]
    python tools/benchmark.py train --config=CONFIG --data=DATASET [--steps=60] [--quick]

loader: DALI (GPU, CPU, CPU with lighting) vs FFCV's Loader vs a torch DataLoader (tools/bench/loader.py).
model, train: train-step images/s on synthetic tensors; end to end and saturation (tools/bench/model.py).

    python tools/benchmark.py learn --data=DATASET [--steps=0] [--batch_size=64] [--eval_every=40] [--quick]

learn: recipes trained side by side on one dataset, per-step loss and val top-1 (tools/bench/learn.py).

    python tools/benchmark.py syncs --data=DATASET [--precision=fp32,bf16,fp16] [--steps=8]

syncs: host-device syncs per training step, by phase, for each precision (CUDA only; tools/bench/syncs.py).

    python tools/benchmark.py store --data=RAW_DATASET[,JPEG_DATASET] [--shards=12] [--endpoint=URL]
    python tools/benchmark.py shuffle [--batch_size=256]

store: the loader on s3:// (a local SeaweedFS, or --endpoint) cold, warm and local; a quarter
    cache in block vs global order (tools/bench/store.py). shuffle: distinct labels per batch in
    each sample order, simulated for ImageNet with the sampler alone.

    python tools/benchmark.py boundary --data=RAW_DATASET [--batch_size=256]

boundary: the training thread's time at an epoch boundary for ImageNet's 1.28M samples, the next
    epoch's planning inline vs on the loader's planner thread (tools/bench/boundary.py).

    python tools/benchmark.py table JSON

table: print again the Markdown tables of a run from its JSON (the tables in BENCHMARKS.md).
"""
import io
import json as jsonlib
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import UsageError
from pipeline.prepare.convert import convert
from pipeline.prepare.preprocess import centre_box, decode, decode_rgb, encode_jpeg, to_rgb_square
from pipeline.prepare.sources import detect, read_bytes
from tools import synthetic
from tools.bench import harness as bench
from tools.bench import loader as loader_bench
from tools.bench.boundary import boundary
from tools.bench.learn import learn
from tools.bench.loader import loader
from tools.bench.store import shuffle, store
from tools.bench.model import MODEL_COLUMNS, TRAIN_COLUMNS, model, train
from tools.bench.syncs import syncs
from pipeline.cli import run_cli
from tools.export_ffcv import require_ffcv
from tools.fidelity import decode_full, psnr, reference

SIZE = 256
SHARD_SIZE = 1024  # the converter's default, passed explicitly to know how many tasks it runs
PREPARE_COLUMNS = [("system", "system", "s"), ("workers", "workers", "d"), ("images", "n_images", "d"),
                   ("median s", "median_s", ".2f"), ("images/s", "images_per_s", ".1f"),
                   ("images/s/core", "images_per_s_per_core", ".1f"), ("cores busy", "cores_busy", ".2f"),
                   ("fixed s", "fixed_s", ".2f"),
                   ("marginal images/s/core", "marginal_images_per_s_per_core", ".1f"),
                   ("marginal images/CPU-s", "marginal_images_per_cpu_s", ".1f"),
                   ("PSNR min dB", "psnr_min_db", ".1f"), ("PSNR mean dB", "psnr_mean_db", ".1f"),
                   ("note", "note", "s")]


class PhotoFiles:
    """What FFCV users hand to DatasetWriter (torchvision ImageFolder's loader):
    ``[i] -> (PIL RGB image, label)`` decoded from the source file."""

    def __init__(self, src: Path, items):
        self.src, self.items = src, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        return Image.open(io.BytesIO(read_bytes(self.src, item.locator))).convert("RGB"), item.label


def pillow_square(data: bytes, size: int = SIZE) -> np.ndarray:
    """The plain loop's preprocessing: full decode, whole image resized, then cropped."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                     Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def torch_aa_square(data: bytes, size: int = SIZE) -> np.ndarray:
    """Candidate: the same decode, then torch's uint8 antialiased bicubic (AVX2 on x86) over the
    centre box rounded to whole pixels, one thread."""
    import torch

    img = decode(data, size).convert("RGB")
    x0, y0, x1, y1 = (round(v) for v in centre_box(*img.size))
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None, :, y0:y1, x0:x1]  # channels-last
    out = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True)
    return out[0].permute(1, 2, 0).numpy()


def _generate(root: Path, images: int) -> Path:
    """About ``images`` photo-size JPEGs, 4/5 train and 1/5 val (at least one val per class)."""
    classes = 10 if images >= 50 else 4
    per_class = max(2, images // classes)
    val = max(1, per_class // 5)
    return synthetic.make_imagefolder(root, n_classes=classes, train_per_class=per_class - val,
                                      val_per_class=val, sizes=synthetic.PHOTO_SIZES)


def _subset_tree(src: Path, items, root: Path) -> Path:
    """``items`` of SRC (any layout) copied into a fresh train/<label>/ ImageFolder tree."""
    for i, item in enumerate(items):
        path = root / "train" / f"{item.label:05d}" / f"{i:06d}{Path(item.source).suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read_bytes(src, item.locator))
    return root


# Each system: (src, items) -> run(scratch), converting those inputs once per call.

def _ours(workers):
    return lambda src, items: lambda scratch: convert(src, scratch / "data", size=SIZE, workers=workers,
                                                      shard_size=SHARD_SIZE, progress=False)


def _ffcv_writer(workers):
    """Raises ImportError (saying how to install FFCV) when it is missing."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    def make(src, items):
        photos = PhotoFiles(src, items)

        def run(scratch):
            fields = {"image": RGBImageField(write_mode="raw", max_resolution=SIZE), "label": IntField()}
            DatasetWriter(str(scratch / "x.beton"), fields, num_workers=workers).from_indexed_dataset(photos)
        return run
    return make


def _pillow_loop(src, items):
    def run(_):
        for item in items:
            pillow_square(read_bytes(src, item.locator))
    return run


def _loop(fn):
    """A system that applies ``fn`` to every input's bytes and discards the result."""
    def make(src, items):
        def run(_):
            for item in items:
                fn(read_bytes(src, item.locator))
        return run
    return make


def _one_thread(make):
    """torch's intra-op threads would use the cores that per-core figures assume idle."""
    def wrapped(src, items):
        run = make(src, items)

        def one(scratch):
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                run(scratch)
            finally:
                torch.set_num_threads(before)
        return one
    return wrapped


def projection(rows: list[dict], jpeg_bytes: float, images: int = 1_281_167, cores: int = 16) -> dict:
    """ImageNet's train set on ``cores`` cores at each system's marginal rate per CPU second
    (assumes linear scaling over cores and the same per-image cost as these inputs), and the bytes
    ours writes per encoding (raw: 256x256x3 per image; jpeg: the mean measured here)."""
    hours = {r["system"]: images / (r["marginal_images_per_cpu_s"] * cores) / 3600
             for r in rows if r.get("marginal_images_per_cpu_s")}
    return {"images": images, "cores": cores, "wall_hours": hours,
            "raw_bytes": images * SIZE * SIZE * 3, "jpeg_q90_bytes": round(images * jpeg_bytes)}


def prepare(source: str | None = None, json: str = "bench_out/prepare.json", quick: bool = False,
            workers: int = 1, repeats: int | None = None, images: int | None = None):
    """Converter images/s per core: ours vs FFCV's DatasetWriter vs a plain Pillow loop, with the
    decode alone (the ceiling) and the resampler candidates on the same files.

    source: a small source tree to convert (any layout; default: generated photo-size JPEGs)
    json: where to write the results (JSON; a Markdown table and a PNG chart go beside it)
    quick: a smoke test: 24 images, 1 repeat
    workers: converter processes for ours and FFCV's writer, >= 1
    repeats: timed repeats after the warm-up (default: 3, or 1 with --quick)
    images: how many JPEGs to generate without --source (default: 200, or 24 with --quick)
    """
    repeats = repeats or (1 if quick else 3)
    images = images or (24 if quick else 200)
    if not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {workers!r}")
    with tempfile.TemporaryDirectory(prefix="bench-src-") as tmp:
        if source is None:
            src = _generate(Path(tmp) / "src", images)
            source_desc = f"generated by tools.synthetic: photo sizes {synthetic.PHOTO_SIZES}, quality 90"
        else:
            src, source_desc = Path(source).resolve(), str(Path(source).resolve())
        layout = detect(src)
        items = [item for split in sorted(layout.splits) for item in layout.splits[split]]
        n = len(items)
        if n < 2:
            raise UsageError(f"{src}: {n} inputs; the benchmark needs at least 2")
        # Every system also converts every tenth input (a sample of the same sizes), so that
        # per-run costs (process start, listing, manifest) separate from the per-image rate
        # that decides a 1.28 M-image job.
        small = _subset_tree(src, items[::10], Path(tmp) / "small")
        small_items = detect(small).splits["train"]
        blobs = [read_bytes(src, item.locator) for item in items]
        sizes = np.array([Image.open(io.BytesIO(b)).size for b in blobs])
        env = bench.environment()
        config = {"source": source_desc, "size": SIZE, "quick": quick, "warmup": 1,
                  "subset_images": len(small_items),
                  "mean_input_wh": sizes.mean(axis=0).round(1).tolist(),
                  "mean_input_kib": round(sum(map(len, blobs)) / n / 1024, 1)}

        def row(system, make, used, **extra):
            times = bench.time_runs(make(src, items), repeats)
            subset = bench.time_runs(make(small, small_items), repeats)
            return bench.throughput_row("prepare", system, n, used, times, (len(small_items), subset),
                                        config=config, **env, **extra)

        # ours: one process per shard task, so never more workers than shards.
        tasks = sum(math.ceil(len(v) / SHARD_SIZE) for v in layout.splits.values())
        references = [reference(decode_full(b), SIZE) for b in blobs]
        squares = [to_rgb_square(b, SIZE) for b in blobs]
        db = [psnr(a, r) for a, r in zip(squares, references)]
        config["mean_jpeg_q90_bytes"] = float(np.mean([len(encode_jpeg(a, 90)) for a in squares]))
        rows = [row("ours", _ours(workers), min(workers, tasks),
                    psnr_min_db=min(db), psnr_mean_db=float(np.mean(db)),
                    note="raw shards + train stats, fsync'd; PSNR vs float reference")]
        try:
            ffcv_writer = _ffcv_writer(workers)
        except ImportError as e:
            print(f"ffcv-writer skipped: {e}", file=sys.stderr)
            rows.append({"bench": "prepare", "system": "ffcv-writer", "skipped": str(e),
                         "note": f"skipped: {e}", "config": config, **env})
        else:
            rows.append(row("ffcv-writer", ffcv_writer, workers,
                            note="max side 256, aspect kept, no centre crop (cv2 INTER_AREA)"))
        rows.append(row("pillow-loop", _pillow_loop, 1, note="arrays discarded (nothing written)"))
        rows.append(row("decode-only", _loop(lambda b: decode(b, SIZE)), 1,
                        note="Pillow's JPEG decode alone (ours' DCT scaling): the ceiling"))
        rows.append(row("decode-rgb", _loop(lambda b: decode_rgb(b, SIZE)), 1,
                        note="ours' decode stage alone (simplejpeg, Pillow for the rest): ours' floor"))
        rows.append(row("preprocess", _loop(lambda b: to_rgb_square(b, SIZE)), 1,
                        psnr_min_db=min(db), psnr_mean_db=float(np.mean(db)),
                        note="ours without writing: decode + compiled resize of the exact box"))
        psnr_torch = [psnr(torch_aa_square(b, SIZE), r) for b, r in zip(blobs, references)]
        rows.append(row("torch-aa-u8", _one_thread(_loop(lambda b: torch_aa_square(b, SIZE))), 1,
                        psnr_min_db=min(psnr_torch), psnr_mean_db=float(np.mean(psnr_torch)),
                        note="candidate: decode + torch uint8 AA bicubic, box rounded to whole pixels"))
        config["projection"] = projection(rows, config["mean_jpeg_q90_bytes"])

    bench.report(rows, json, PREPARE_COLUMNS,
                 {"images_per_s_per_core": f"whole run ({n} images)",
                  "marginal_images_per_cpu_s": "marginal, per CPU second"},
                 "images/s per core", f"prepare: JPEG -> {SIZE} px, {n} images, {repeats} repeats")
    print(summary(rows, config))


def summary(rows: list[dict], config: dict) -> str:
    """The goals of the converter as ratios of marginal rates per CPU second in this one run, and
    the projection for ImageNet."""
    rate = {r["system"]: r.get("marginal_images_per_cpu_s") for r in rows}
    lines = []
    for other in ("decode-only", "decode-rgb", "ffcv-writer"):
        if rate.get("ours") and rate.get(other):
            lines.append(f"ours / {other}, marginal per CPU second: {rate['ours'] / rate[other]:.2f}x")
    proj = config["projection"]
    hours = ", ".join(f"{k} {v * 60:.1f} min" for k, v in proj["wall_hours"].items())
    lines.append(f"ImageNet train ({proj['images']:,} images) on {proj['cores']} cores at these rates: "
                 f"{hours}; ours writes {proj['raw_bytes'] / 1e9:.0f} GB raw, "
                 f"{proj['jpeg_q90_bytes'] / 1e9:.0f} GB jpeg q90 "
                 f"({config['mean_jpeg_q90_bytes'] / 1024:.1f} KiB per image on these inputs)")
    return "\n".join(lines)


def table(path: str):
    """Print again the Markdown tables a benchmark run printed, from its JSON: the tables of
    BENCHMARKS.md are these, pasted, so each can be regenerated from the run's record.

    path: a JSON file written by prepare, loader, model or train (their --json)
    """
    try:
        saved = jsonlib.loads(Path(path).read_text())
        kind = saved["rows"][0]["bench"] if saved["rows"] else "loader"
    except (ValueError, KeyError, IndexError, TypeError):
        raise UsageError(f"{path}: not a JSON written by tools/benchmark.py") from None
    if kind == "loader":
        print(loader_bench.tables(saved))
    else:
        print(bench.markdown_table(saved["rows"], {"prepare": PREPARE_COLUMNS, "model": MODEL_COLUMNS,
                                                   "train": TRAIN_COLUMNS}[kind]))


if __name__ == "__main__":
    from tools.bench.model import train_options

    run_cli({"prepare": prepare, "loader": loader, "model": model, "train": train, "learn": learn,
             "store": store, "shuffle": shuffle, "boundary": boundary,
             "syncs": syncs, "table": table},
            extra={"train": train_options()})
