"""ResNet-50 (He et al. 2015) in torchvision's layout and parameter names: Bottleneck blocks
[3, 4, 6, 3] with the stride on the 3x3 conv ("v1.5"), and a CIFAR-style stem for 32 px inputs.

Init is torchvision's, drawn from ``generator`` in registration order: convs kaiming_normal_
(fan_out, relu), BatchNorm weight 1 and bias 0, fc PyTorch's default Linear init. The last BN of a
block is not zero-initialised (torchvision's default, zero_init_residual=False).
Builders construct on the meta device, so PyTorch's own init neither runs nor draws from the global
RNG; ``to_empty`` then allocates and ``_init`` writes every tensor (BatchNorm running stats included).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4 * planes; a projection shortcut where the shape
    changes."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))

    def forward(self, x):                   # (N, inplanes, H, W)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))  # (N, planes, H / stride, W / stride)
        out = self.bn3(self.conv3(out))             # (N, 4 * planes, H / stride, W / stride)
        return self.relu(out + identity)


def make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(inplanes, planes, stride)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int, small: bool):
        super().__init__()
        if small:  # 32 px: keep the full resolution into layer1
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = make_layer(64, 64, 3, stride=1)
        self.layer2 = make_layer(256, 128, 4, stride=2)
        self.layer3 = make_layer(512, 256, 6, stride=2)
        self.layer4 = make_layer(1024, 512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):                           # resnet50: (N, 3, 224, 224)   small: (N, 3, 32, 32)
        x = self.relu(self.bn1(self.conv1(x)))      # (N, 64, 112, 112)                   (N, 64, 32, 32)
        x = self.maxpool(x)                         # (N, 64, 56, 56)                     (N, 64, 32, 32)
        x = self.layer1(x)                          # (N, 256, 56, 56)                    (N, 256, 32, 32)
        x = self.layer2(x)                          # (N, 512, 28, 28)                    (N, 512, 16, 16)
        x = self.layer3(x)                          # (N, 1024, 14, 14)                   (N, 1024, 8, 8)
        x = self.layer4(x)                          # (N, 2048, 7, 7)                     (N, 2048, 4, 4)
        x = torch.flatten(self.avgpool(x), 1)       # (N, 2048)
        return self.fc(x)                           # (N, num_classes)


@torch.no_grad()
def _init(model: nn.Module, generator: torch.Generator | None) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):  # nn.Linear.reset_parameters
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(m.in_features)
            nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model


def resnet50(num_classes: int = 1000, generator: torch.Generator | None = None) -> nn.Module:
    """torchvision's resnet50: 25,557,032 parameters at 1000 classes. Made for 224 px; any side runs."""
    with torch.device("meta"):  # see the module docstring
        model = ResNet50(num_classes, small=False)
    return _init(model.to_empty(device="cpu"), generator)


def resnet50_small(num_classes: int = 10, generator: torch.Generator | None = None) -> nn.Module:
    """CIFAR-style stem: conv1 3x3 stride 1, no max pool (``maxpool`` is an Identity, so the names
    match resnet50's). 23,520,842 parameters at 10 classes. Made for 28-64 px; any side runs:
    28 px gives 28, 14, 7, 4 where 32 px gives 32, 16, 8, 4."""
    with torch.device("meta"):  # see the module docstring
        model = ResNet50(num_classes, small=True)
    return _init(model.to_empty(device="cpu"), generator)
