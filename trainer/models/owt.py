"""AlexNet, single column: torchvision's ``alexnet`` (after Krizhevsky 2014, "One weird trick for
parallelizing convolutional neural networks", arXiv:1404.5997), same layout and parameter names,
so state_dicts load both ways. No LRN, no towers; see alexnet.py for the 2012 paper's network.

Init: PyTorch's default Conv2d/Linear init, which torchvision keeps for AlexNet, drawn from
``generator`` in registration order. So ``alexnet_owt(generator=torch.Generator().manual_seed(s))``
holds exactly the weights ``torch.manual_seed(s); torchvision.models.alexnet()`` would. Builders
construct on the meta device, so PyTorch's own init neither runs nor draws from the global RNG;
``to_empty`` then allocates and ``_init`` writes every tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class AlexNetOWT(nn.Module):
    def __init__(self, features: nn.Sequential, pool: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * pool * pool, hidden), nn.ReLU(inplace=True),   # fc6
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),              # fc7
            nn.Linear(hidden, num_classes))                                                     # fc8

    def forward(self, x):                   # alexnet_owt: (N, 3, 224, 224)   small: (N, 3, 32, 32)
        x = self.features(x)                # (N, 256, 6, 6)                         (N, 256, 3, 3)
        x = self.avgpool(x)                 # (N, 256, 6, 6)                         (N, 256, 2, 2)
        x = torch.flatten(x, 1)             # (N, 9216)                              (N, 1024)
        return self.classifier(x)           # (N, num_classes)


@torch.no_grad()
def _init(model: nn.Module, generator: torch.Generator | None) -> nn.Module:
    """nn.Conv2d / nn.Linear ``reset_parameters``, with every draw taken from ``generator``."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(m.weight[0].numel())  # 1 / sqrt(fan_in)
            nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model


def alexnet_owt(num_classes: int = 1000, dropout: float = 0.5,
                generator: torch.Generator | None = None) -> nn.Module:
    """torchvision's AlexNet: 61,100,840 parameters at 1000 classes. Inputs of 63 px or more."""
    with torch.device("meta"):  # see the module docstring
        features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # (N, 64, 55, 55)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),                  # (N, 64, 27, 27)
            nn.Conv2d(64, 192, kernel_size=5, padding=2),           # (N, 192, 27, 27)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),                  # (N, 192, 13, 13)
            nn.Conv2d(192, 384, kernel_size=3, padding=1),          # (N, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),          # (N, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),          # (N, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2))                  # (N, 256, 6, 6)
        model = AlexNetOWT(features, 6, 4096, num_classes, dropout)
    return _init(model.to_empty(device="cpu"), generator)


def alexnet_owt_small(num_classes: int = 10, dropout: float = 0.5,
                      generator: torch.Generator | None = None) -> nn.Module:
    """The same layers and names for 28-64 px inputs (any side >= 15 px works): conv1 is 5x5 stride 1
    instead of 11x11 stride 4, the average pool goes to 2x2, and fc6/fc7 are 1024 wide instead of
    4096 (as alexnet_small's are; 4096 would be ~21M parameters for 32 px data). Shapes for 32 px;
    28 px gives 28, 13, 6 and 2 where 32 px gives 32, 15, 7 and 3."""
    with torch.device("meta"):  # see the module docstring
        features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=5, stride=1, padding=2),   # (N, 64, 32, 32)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),                  # (N, 64, 15, 15)
            nn.Conv2d(64, 192, kernel_size=5, padding=2),           # (N, 192, 15, 15)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),                  # (N, 192, 7, 7)
            nn.Conv2d(192, 384, kernel_size=3, padding=1),          # (N, 384, 7, 7)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),          # (N, 256, 7, 7)
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),          # (N, 256, 7, 7)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2))                  # (N, 256, 3, 3)
        model = AlexNetOWT(features, 2, 1024, num_classes, dropout)
    return _init(model.to_empty(device="cpu"), generator)
