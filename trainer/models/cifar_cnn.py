"""A plain Keras-style CIFAR-10 CNN: 3x3 convs 64-64-pool-128-pool-256-pool, dense 512-512, logits.

Dropout follows each hidden dense layer (dense -> ReLU -> dropout), as in the usual Keras models;
the conv stack has none. Init is Keras's default, drawn from ``generator`` in registration order:
glorot (xavier) uniform weights, zero biases. Built on the meta device, so PyTorch's own init neither
runs nor draws from the global RNG; ``to_empty`` then allocates and ``_init`` writes every tensor.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def conv3x3(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]


class CifarCNN(nn.Module):
    def __init__(self, num_classes: int, dropout: float):
        super().__init__()
        self.features = nn.Sequential(
            *conv3x3(3, 64), *conv3x3(64, 64), nn.MaxPool2d(2),    # (N, 64, 16, 16)
            *conv3x3(64, 128), nn.MaxPool2d(2),                    # (N, 128, 8, 8)
            *conv3x3(128, 256), nn.MaxPool2d(2))                   # (N, 256, 4, 4)
        self.classifier = nn.Sequential(
            nn.Linear(256 * 4 * 4, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, num_classes))

    def forward(self, x):                   # (N, 3, 32, 32)
        x = self.features(x)                # (N, 256, 4, 4)
        x = torch.flatten(x, 1)             # (N, 4096)
        return self.classifier(x)           # (N, num_classes)


@torch.no_grad()
def _init(model: nn.Module, generator: torch.Generator | None) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            nn.init.zeros_(m.bias)
    return model


def cifar_cnn(num_classes: int = 10, dropout: float = 0.5,
              generator: torch.Generator | None = None) -> nn.Module:
    """2,773,194 parameters at 10 classes. 32 px inputs: the dense head is sized for the 4x4 map
    (Keras's Flatten), so 28 px inputs are rejected (sides 32-39 px all reach 4x4)."""
    with torch.device("meta"):
        model = CifarCNN(num_classes, dropout)
    return _init(model.to_empty(device="cpu"), generator)
