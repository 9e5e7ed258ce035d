"""Evaluation, shared by the trainer (every ``eval_every`` epochs) and tools/evaluate.py (a
finished checkpoint): the loaders a config asks for, and top-1 / top-5 / loss over a whole split.

    loaders = val_loaders(cfg, d, "val", batch_size, one_crop=True, ten_crop=cfg.ten_crop_eval)
    row = evaluate(model, loaders["one"], d, amp, False, n_expected=len(ds["val"]))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import pipeline
from pipeline.load.loader import default_threads
from trainer.metrics import with_progress
from trainer.parallel import all_reduce_sum
from trainer.step import input_dtype


class EvaluationError(RuntimeError):
    """An evaluation that did not see every sample of its split exactly once."""


def loader_args(cfg, mesh) -> dict:
    """The loader arguments a config implies on this rank (train and val alike): the batches
    arrive on the run's device, in its precision and layout (cast by the loader's last op)."""
    return dict(crop=cfg.crop, device=mesh.device, dp_rank=mesh.dp_rank, dp_size=mesh.dp_size, seed=cfg.seed,
                mean=cfg.mean, channels_last=cfg.channels_last, dtype=input_dtype(cfg.precision),
                num_threads=cfg.loader_threads or default_threads()[0],
                cache_dir=cfg.cache_dir or None, cache_limit=cfg.cache_limit or None)


def val_loaders(cfg, mesh, split: str, batch_size: int, one_crop: bool, ten_crop: bool, data=None) -> dict:
    """{"one": centre-crop loader, "ten": ten-crop loader} as asked, their DALI graphs built now:
    before training allocates its memory, not at the first evaluation. Ten-crop batches hold a
    tenth of ``batch_size`` images (ten crops each)."""
    common = loader_args(cfg, mesh)
    data = cfg.data if data is None else data  # an open Dataset: a bucket's is not listed again
    loaders = {}
    if one_crop:
        loaders["one"] = pipeline.build_loader(data, split, batch_size=batch_size, **common)
    if ten_crop:
        loaders["ten"] = pipeline.build_loader(data, split, batch_size=max(1, batch_size // 10),
                                               ten_crop=True, **common)
    for loader in loaders.values():
        loader.prepare()
    return loaders


def evaluate(model, loader, mesh, amp, ten_crop: bool, n_expected: int) -> dict:
    """Top-1/top-5 and loss over the whole split: sums and counts reduced over dp, never means.
    Ten-crop averages the softmax over the 10 patches (paper section 4.1)."""
    loader = with_progress(loader, mesh.is_main, "eval ten-crop" if ten_crop else "eval one-crop")
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=mesh.device)  # loss, top1, top5, count
    count = 0  # on the host: a batch's size is its shape, no device read
    with torch.no_grad(), amp():
        for images, labels in loader:
            if len(labels) == 0:
                continue
            if ten_crop:
                n = len(labels)
                probs = F.softmax(model(images.flatten(0, 1)).float(), dim=1).view(n, 10, -1).mean(1)
                loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum")
                scores = probs
            else:
                scores = model(images).float()
                loss = F.cross_entropy(scores, labels, reduction="sum")
            top = scores.topk(min(5, scores.shape[1]), dim=1).indices
            hit = top == labels[:, None]
            sums[:3] += torch.stack([loss.double(), hit[:, 0].sum().double(), hit.any(1).sum().double()])
            count += len(labels)
    sums[3] = count  # a fill on the device, not a copy from the host
    all_reduce_sum(sums, mesh.dp_group)
    model.train()
    loss, top1, top5, count = sums.tolist()
    if int(count) != n_expected:
        raise EvaluationError(f"evaluation counted {int(count)} val samples, the split has {n_expected}")
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count}
