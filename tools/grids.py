"""A dataset at a glance: a text summary, and a PNG grid of samples with their labels."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageDraw

from pipeline import format as fmt


def summary(ds) -> str:
    m, stats = ds.manifest, ds.stats
    lines = [f"dataset   {ds.root}",
             f"format    version {m['version']}, {ds.size}x{ds.size} {ds.encoding}"
             + (f" (quality {m['quality']})" if ds.encoding == "jpeg" else "")
             + f", source layout {m['layout']}",
             f"classes   {len(ds.classes)}: " + ", ".join(
                 f"{c} ({n})" if n != c else c for c, n in list(zip(ds.classes, ds.class_names))[:5])
             + (" ..." if len(ds.classes) > 5 else "")]
    for name, split in ds.splits.items():
        info = m["splits"][name]
        counts = np.bincount(split.labels, minlength=len(ds.classes))
        nbytes = sum(s["bytes"] for s in info["shards"])
        lines.append(f"{name:<9} {len(split)} images in {len(split.shards)} shards, {nbytes / 2**20:.1f} MiB, "
                     f"{info['skipped']} skipped; per class min {counts.min()} max {counts.max()}")
    skipped = json.loads(ds.read_text(fmt.SKIPPED))
    if skipped:
        lines.append(f"skipped   {len(skipped)} inputs, listed in {ds.root / fmt.SKIPPED}")
    lines += [f"stats     over {int(stats['count'])} train images, pixel units 0..255",
              f"  channel_mean {np.array2string(stats['channel_mean'], precision=2)}",
              f"  channel_std  {np.array2string(stats['channel_std'], precision=2)}",
              f"  eigval       {np.array2string(stats['eigval'], precision=2)}",
              f"  eigvec (columns)\n{np.array2string(stats['eigvec'], precision=4)}"]
    return "\n".join(lines)


def save_grid(images, captions, path, columns: int = 8, tile: int = 128, title: str = "") -> None:
    """Write uint8 HWC images as a labelled PNG grid; a caption may hold two lines ("\n"), and
    ``title`` (lines) goes above the grid."""
    rows = max(1, -(-len(images) // columns))
    lines = max((str(c).count("\n") + 1 for c in captions), default=1)
    cell = tile + 14 * lines
    head = 14 * (title.count("\n") + 1) + 4 if title else 0
    canvas = Image.new("RGB", (columns * tile, head + rows * cell), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.multiline_text((4, 2), title, fill="black", spacing=2)
    for n, (img, caption) in enumerate(zip(images, captions)):
        x, y = (n % columns) * tile, head + (n // columns) * cell
        canvas.paste(Image.fromarray(img).resize((tile, tile), Image.Resampling.BILINEAR), (x, y))
        text = "\n".join(part[:22] for part in str(caption).split("\n"))
        draw.multiline_text((x + 2, y + tile), text, fill="black", spacing=2)
    canvas.save(path)


def dataset_grid(ds, path, split: str = "train", n: int = 32, columns: int = 8) -> None:
    data = ds[split]
    idx = np.linspace(0, len(data) - 1, min(n, len(data))).astype(int)
    samples = [data[int(i)] for i in idx]
    save_grid([img for img, _ in samples], [ds.class_names[label] for _, label in samples], path, columns)


def augmented_grid(dataset, path, n: int = 16, crop: int | None = None, lighting: float = 0.1,
                   seed: int = 0) -> None:
    """Pairs of (stored image, what the train loader makes of it) as a PNG: random crop, flip and
    PCA lighting visible (mean subtraction off so the pixels stay viewable; no clipping inside
    the loader, clipped here for display only). The picture says the lighting std it was drawn
    at and each sample's alpha, so a larger-than-trained std (to make it visible) is not read as
    the training augmentation."""
    import torch

    from pipeline import open_dataset
    from pipeline import build_loader

    ds = open_dataset(dataset)
    crop = crop or ds.size * 7 // 8
    loader = build_loader(dataset, "train", batch_size=n, crop=crop, device="cpu", mean="none",
                          lighting=lighting, seed=seed, drop_last=False)
    images, _ = next(iter(loader))
    idx = loader.indices(0, 0)
    _, d = loader.plan(0)
    tiles, captions = [], []
    for k, i in enumerate(idx[:n]):
        original, label = ds["train"][int(i)]
        aug = images[k].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()
        tiles += [original, aug]
        a = d.alpha[i]
        captions += [ds.class_names[label],
                     f"x{d.crop_x[i]} y{d.crop_y[i]}{' flip' if d.flip[i] else ''}\n"
                     f"a {a[0]:+.2f}{a[1]:+.2f}{a[2]:+.2f}"]
    title = (f"pairs: stored image | train loader output ({crop} px crop at x, y; flip; PCA lighting "
             f"alpha a ~ N(0, {lighting:g}) per image)")
    if lighting != 0.1:
        title += f"\nlighting std {lighting:g} here, {lighting / 0.1:g}x the recipes' 0.1, to make it visible"
    save_grid(tiles, captions, path, columns=8, title=title)
