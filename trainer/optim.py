"""The optimizer, built in one place for the trainer and the model benchmark (so the benchmark
times the update that trains): SGD with momentum, weight decay on weights only (as cuda-convnet:
biases and BatchNorm scales and shifts, every parameter with ndim <= 1, are not decayed), and
those learn at ``lr x bias_lr_mult`` (cuda-convnet's epsB and Caffe's bvlc_alexnet: twice the
weights' rate). Each group's ``lr_mult`` is what the schedule's rate is multiplied by (set_lr)."""
from __future__ import annotations

import torch


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.SGD:
    """cfg: anything with lr, momentum, nesterov, weight_decay and bias_lr_mult
    (trainer.config.Config)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
                                 {"params": no_decay, "weight_decay": 0.0, "lr_mult": cfg.bias_lr_mult}],
                                lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    set_lr(optimizer, cfg.lr)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate for this step, times each group's multiplier (1 where a group, e.g. one
    restored from a checkpoint written before multipliers existed, has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
