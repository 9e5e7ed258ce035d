"""VGG-16 (Simonyan & Zisserman 2014, configuration D) in torchvision's layout and parameter names,
and a CIFAR-style variant with BatchNorm for 32 px inputs.

Init is torchvision's, drawn from ``generator`` in registration order: convs kaiming_normal_
(fan_out, relu) with zero bias, BatchNorm weight 1 and bias 0, linears N(0, 0.01) with zero bias.
Builders construct on the meta device, so PyTorch's own init neither runs nor draws from the global
RNG; ``to_empty`` then allocates and ``_init`` writes every tensor (BatchNorm running stats included).
"""
from __future__ import annotations

import torch
import torch.nn as nn

# Output channels of each 3x3 conv, "M" a 2x2 max pool. Each pool halves the side:
# 224 px -> 112, 56, 28, 14, 7;  32 px -> 16, 8, 4, 2, 1.
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def make_features(cfg: list, batch_norm: bool) -> nn.Sequential:
    """torchvision's ``make_layers``: conv (+ BN) + ReLU per number, max pool per "M"."""
    layers, in_channels = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, pool: int, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = classifier

    def forward(self, x):                   # vgg16: (N, 3, 224, 224)   small: (N, 3, 32, 32)
        x = self.features(x)                # (N, 512, 7, 7)                   (N, 512, 1, 1)
        x = self.avgpool(x)                 # (N, 512, 7, 7)                   (N, 512, 1, 1)
        x = torch.flatten(x, 1)             # (N, 25088)                       (N, 512)
        return self.classifier(x)           # (N, num_classes)


@torch.no_grad()
def _init(model: nn.Module, generator: torch.Generator | None) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
            nn.init.zeros_(m.bias)
    return model


def vgg16(num_classes: int = 1000, dropout: float = 0.5,
          generator: torch.Generator | None = None) -> nn.Module:
    """torchvision's vgg16 (no BatchNorm): 138,357,544 parameters at 1000 classes. Inputs of 32 px
    or more (below 224 px the 7x7 average pool repeats the smaller map)."""
    with torch.device("meta"):  # see the module docstring
        classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),    # fc6
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),           # fc7
            nn.Linear(4096, num_classes))                                                # fc8
        model = VGG(make_features(VGG16, batch_norm=False), 7, classifier)
    return _init(model.to_empty(device="cpu"), generator)


def vgg16_small(num_classes: int = 10, dropout: float = 0.5,
                generator: torch.Generator | None = None) -> nn.Module:
    """CIFAR-style VGG-16: the same 13 convs, each followed by BatchNorm (features named as in
    torchvision's vgg16_bn), a 1x1 average pool and a 512-512-num_classes head. Inputs of 32 px or
    more (five 2x2 pools; 28 px would reach 0x0)."""
    with torch.device("meta"):  # see the module docstring
        classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, num_classes))
        model = VGG(make_features(VGG16, batch_norm=True), 1, classifier)
    return _init(model.to_empty(device="cpu"), generator)
