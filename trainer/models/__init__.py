"""Model registry: ``build_model(name, ...)``. Only ``alexnet`` and ``alexnet_small`` (the paper's
two towers) can be split across a model-parallel pair; the rest run with mp=1."""
from __future__ import annotations

import torch

from .alexnet import PAPER, SMALL, AlexNet

SPLITTABLE = {"alexnet": PAPER, "alexnet_small": SMALL}


def names() -> list[str]:
    from .zoo import BUILDERS
    return sorted(list(SPLITTABLE) + list(BUILDERS))


def build_model(name: str, num_classes: int, crop: int, *, dropout: float = 0.5, bias_init: float = 1.0,
                seed: int = 0, mp_group=None, mp_size: int = 1, mp_rank: int = 0, init: str = "paper",
                dropout_form: str = "inverted") -> torch.nn.Module:
    """The same seed gives the same full network whatever the layout (see alexnet.py). ``init``,
    ``bias_init`` and ``dropout_form`` are the paper AlexNet's (alexnet.py); the other models use
    their own published init and torch's dropout."""
    generator = torch.Generator().manual_seed(seed)
    if name in SPLITTABLE:
        return AlexNet(SPLITTABLE[name], num_classes, crop, dropout, bias_init, mp_group, mp_size,
                       mp_rank, generator, init, dropout_form)
    from .zoo import BUILDERS
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {names()}")
    if mp_size != 1:
        raise ValueError(f"model {name!r} cannot be split across ranks: mp=2 is only for "
                         f"{sorted(SPLITTABLE)}")
    return BUILDERS[name](num_classes=num_classes, dropout=dropout, generator=generator)


def model_from_config(cfg, num_classes: int, mp_group=None, mp_size: int = 1, mp_rank: int = 0):
    """``build_model`` with every model key of a trainer config: the one place the trainer, the
    evaluation and the benchmarks turn a config into a network."""
    return build_model(cfg.model, num_classes, cfg.crop, dropout=cfg.dropout, bias_init=cfg.bias_init,
                       seed=cfg.seed, mp_group=mp_group, mp_size=mp_size, mp_rank=mp_rank,
                       init=cfg.init, dropout_form=cfg.dropout_form)
