"""The optimizer, built in one place for the trainer and the model benchmark (so the benchmark
times the update that trains): SGD with momentum, weight decay on weights only (as cuda-convnet:
biases and BatchNorm scales and shifts, every parameter with ndim <= 1, are not decayed)."""
from __future__ import annotations

import torch


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.SGD:
    """cfg: anything with lr, momentum, nesterov and weight_decay (trainer.config.Config)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
