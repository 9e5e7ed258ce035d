"""The end of a conversion: the partial statistics summed (exact integers, fixed order),
stats.npz, skipped.json and last manifest.json written, .work removed; and the summary report."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .. import __version__
from .. import format as fmt
from ..fileio import atomic_write, sha256_file
from .job import OutputError, finish_cleanup
from .preprocess import PARAMS
from .stats import Accumulator, npz_bytes
from .worker import partial_path


def finalize(out: Path, layout, identity: dict, shards: dict) -> dict:
    manifest_splits, skipped = {}, []
    acc = Accumulator(identity["size"])
    for split, chunks in shards.items():
        entries, truncated = [], []
        for k in range(len(chunks)):
            with np.load(partial_path(out, split, k)) as part:
                skipped += json.loads(part["skipped"].tobytes())
                if "truncated" in part.files:  # absent in partials of earlier versions
                    truncated += json.loads(part["truncated"].tobytes())
                entry = json.loads(part["entry"].tobytes())
                if split == "train":
                    acc.merge(Accumulator.from_state(part))
            entries.append({"file": f"{split}/{fmt.shard_name(k)}", **entry})
        manifest_splits[split] = {"count": sum(e["count"] for e in entries),
                                  "inputs": sum(len(c) for c in chunks),
                                  "skipped": sum(len(c) for c in chunks) - sum(e["count"] for e in entries),
                                  "truncated": truncated, "shards": entries}
    skipped = layout.ignored + skipped
    atomic_write(out / fmt.SKIPPED, json.dumps(skipped, indent=1, ensure_ascii=False).encode())
    for split, info in manifest_splits.items():
        if info["inputs"] and not info["count"]:
            # Training or evaluation would fail hours later: not a dataset, never exit 0.
            raise OutputError(f"{split}: none of its {info['inputs']} inputs could be converted; "
                              f"reasons in {out / fmt.SKIPPED}; the dataset is not complete")
    atomic_write(out / fmt.STATS, npz_bytes(acc.finalize()))
    stats_entry = {"file": fmt.STATS, "bytes": (out / fmt.STATS).stat().st_size,
                   "sha256": sha256_file(out / fmt.STATS)}
    names = layout.class_names or [None] * len(layout.classes)
    manifest = {
        "format": "alexnet-pipeline shards", "version": fmt.VERSION, "tool_version": __version__,
        "size": identity["size"], "encoding": identity["encoding"], "quality": identity["quality"],
        "layout": layout.name,
        "classes": [{"id": c, "name": n} for c, n in zip(layout.classes, names)],
        "splits": manifest_splits, "stats": stats_entry, "skipped_file": fmt.SKIPPED,
        "preprocessing": dict(PARAMS, size=identity["size"]), "job": identity,
    }
    atomic_write(out / fmt.MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    finish_cleanup(out)
    return manifest


def report(out: Path, manifest: dict) -> None:
    """Summarise on stderr: counts per split, and skipped inputs with their reasons."""
    skipped = json.loads((out / fmt.SKIPPED).read_text())
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['count']} images in {len(info['shards'])} shards"
              f" ({info['skipped']} skipped)", file=sys.stderr)
    truncated = [t for info in manifest["splits"].values() for t in info.get("truncated", ())]
    if truncated:
        print(f"{len(truncated)} inputs end early and were decoded as far as they go (listed under "
              f"\"truncated\" in {out / fmt.MANIFEST}):", file=sys.stderr)
        for t in truncated[:10]:
            print(f"  {t['source']}: {t['missing']}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} inputs not converted (listed in {out / fmt.SKIPPED}):", file=sys.stderr)
        for s in skipped[:10]:
            print(f"  {s['source']}: {s['reason']}", file=sys.stderr)
        if len(skipped) > 10:
            print(f"  ... and {len(skipped) - 10} more", file=sys.stderr)
