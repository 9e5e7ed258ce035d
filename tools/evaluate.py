"""Evaluate a finished checkpoint on a dataset's val split: loss, top-1 and top-5, one-crop and
ten-crop (the paper's test protocol: 4 corners + centre and their mirrors, softmax averaged), with
the trainer's own evaluate function (sums and counts, every sample exactly once).

    .venv/bin/python tools/evaluate.py runs/a/checkpoints/latest.pt              # the run's dataset
    .venv/bin/python tools/evaluate.py runs/a/checkpoints/epoch089.pt --data=DATA --ten_crop=False
    .venv/bin/torchrun --nproc_per_node=8 tools/evaluate.py CKPT --data=DATA     # split over 8 ranks

The model, crop and mean subtraction come from the config saved in the checkpoint.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from pipeline.cli import run_cli


def main(checkpoint: str, data: str | None = None, split: str = "val", one_crop: bool = True,
         ten_crop: bool = True, batch_size: int = 100, device: str = "auto",
         precision: str | None = None, json: str | None = None, cache_dir: str | None = None):
    """Evaluate CHECKPOINT (from trainer/main.py) on SPLIT of a dataset, one-crop and ten-crop.

    checkpoint: a checkpoint file of trainer/main.py: RUN/checkpoints/latest.pt or epochNNN.pt
    data: the dataset directory or its copy in a bucket, s3://bucket/prefix (default: the one the
        run trained on, from the checkpoint's config)
    split: the split to evaluate (val; train works too, for a look at overfitting)
    one_crop: evaluate the centre crop
    ten_crop: evaluate the ten crops, softmax averaged over them
    batch_size: images per batch on each rank (ten-crop: a tenth of it, 10 crops each)
    device: auto | cpu | cuda (auto: cuda when available)
    precision: fp32 | bf16 | fp16 (default: the run's; fp16 needs CUDA)
    json: also write the results to this JSON file
    cache_dir: where a bucket's shards are cached (default: the run's, else ~/.cache/alexnet-pipeline/shards)
    """
    import json as jsonlib

    import torch

    from pipeline import open_dataset
    from pipeline.errors import UsageError
    from trainer.config import make_config
    from trainer.evaluation import evaluate, val_loaders
    from trainer.models import model_from_config
    from trainer.parallel import cleanup, init_distributed
    from trainer.step import autocast

    if batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1, got {batch_size}")
    if not (one_crop or ten_crop):
        raise UsageError("--one_crop=False and --ten_crop=False leave nothing to evaluate")
    if not Path(checkpoint).is_file():
        raise UsageError(f"{checkpoint}: no such checkpoint file")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 (pickle and zip raise many kinds: all mean "not readable")
        raise UsageError(f"{checkpoint}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not {"model", "config"} <= set(state):
        raise UsageError(f"{checkpoint}: not a checkpoint of trainer/main.py (no model and config)")
    overrides = {"mp": 1, "device": device, **({"data": data} if data else {}),
                 **({"cache_dir": cache_dir} if cache_dir else {}),
                 **({"precision": precision} if precision else {})}
    cfg = make_config(None, **{**state["config"], **overrides})  # the checkpoint's layout is mp=1

    mesh = init_distributed(1, cfg.device)
    try:
        ds = open_dataset(cfg.data, cache_dir=cfg.cache_dir or None, cache_limit=cfg.cache_limit or None)
        if split not in ds:
            raise UsageError(f"--split: {ds.root}: no split {split!r}; it has {sorted(ds.splits)}")
        model = model_from_config(cfg, len(ds.classes))
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UsageError(f"{checkpoint} does not fit {cfg.model} on {ds.root} "
                             f"({len(ds.classes)} classes, crop {cfg.crop}): {e}") from None
        model = model.to(mesh.device, memory_format=torch.channels_last if cfg.channels_last
                         else torch.preserve_format)
        amp = partial(autocast, mesh.device.type, cfg.precision)
        results = {"checkpoint": str(checkpoint), "step": state.get("step"), "data": str(ds.root),
                   "split": split, "images": len(ds[split])}
        # the inputs the trainer's evaluation saw: the same loaders from the same config
        loaders = val_loaders(cfg, mesh, split, batch_size, one_crop=one_crop, ten_crop=ten_crop, data=ds)
        for kind, key in (("one_crop", "one"), ("ten_crop", "ten")):
            if key in loaders:
                results[kind] = evaluate(model, loaders[key], mesh, amp, key == "ten", len(ds[split]))
        if mesh.is_main:
            for kind in ("one_crop", "ten_crop"):
                if kind in results:
                    r = results[kind]
                    print(f"{kind.replace('_', '-'):<9} {split} ({len(ds[split])} images): loss {r['loss']:.4f} "
                          f"top-1 {r['top1']:.4f} top-5 {r['top5']:.4f}")
            if json:
                Path(json).write_text(jsonlib.dumps(results, indent=1))
    finally:
        cleanup()


if __name__ == "__main__":
    from trainer.evaluation import EvaluationError

    run_cli(main, known=(EvaluationError,))
