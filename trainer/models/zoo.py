"""Single-module models by name, each built as ``BUILDERS[name](num_classes, dropout, generator)``.

The same generator state gives bit-identical weights, and building with a generator never touches
the global RNG (with None, the init draws from it). ResNet has no dropout and ignores the argument.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .cifar_cnn import cifar_cnn
from .owt import alexnet_owt, alexnet_owt_small
from .resnet import resnet50, resnet50_small
from .small_bn import small_bn
from .vgg import vgg16, vgg16_small

Builder = Callable[[int, float, torch.Generator | None], nn.Module]


def _without_dropout(build: Callable[[int, torch.Generator | None], nn.Module]) -> Builder:
    def builder(num_classes: int, dropout: float, generator: torch.Generator | None = None) -> nn.Module:
        return build(num_classes, generator)
    return builder


BUILDERS: dict[str, Builder] = {
    "alexnet_owt": alexnet_owt,              # 224 px
    "alexnet_owt_small": alexnet_owt_small,  # 28-64 px
    "vgg16": vgg16,                          # 224 px
    "vgg16_small": vgg16_small,              # 32-64 px
    "resnet50": _without_dropout(resnet50),  # 224 px
    "resnet50_small": _without_dropout(resnet50_small),  # 28-64 px
    "cifar_cnn": cifar_cnn,                  # 32 px
    "small_bn": small_bn,                    # 8-64 px (Fashion-MNIST)
}
