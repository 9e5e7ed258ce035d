"""AlexNet as in the 2012 paper: two towers, split across an mp pair or as groups=2 in one module.

With mp=2 each rank holds one tower, as on the two GTX 580s (cuda-convnet2's 2-GPU model):

    layer   per tower   input                     then
    conv1   48  11x11/4 the image                 ReLU, LRN, max-pool 3/2
    conv2   128 5x5     own tower                 ReLU, LRN, max-pool 3/2
    conv3   192 3x3     both towers (all-gather)  ReLU
    conv4   192 3x3     own tower                 ReLU
    conv5   128 3x3     own tower                 ReLU, max-pool 3/2
    fc6     2048        both towers               ReLU, dropout
    fc7     2048        both towers               ReLU, dropout
    fc8     classes/2   both towers               logits gathered on both ranks

An odd class count (Pets 37, Food-101) splits fc8 unevenly, torch.tensor_split's rule: the first
tower gets the extra class (37 = 19 + 18; 1 = 1 + 0), and the logits are gathered by those sizes.

With mp=1 the same network is one module: own-tower convs are groups=2 convolutions, LRN is
applied to each tower's half of the channels, gathers are the identity. Every parameter of the
split model is the mp_rank-th part (along dim 0, tensor_split) of the same parameter of the
one-module model, and both are initialised by drawing the one-module tensors from one generator and
slicing, so the same seed gives the same network whatever mp and dp are.

Initialisation (``init``, one std per layer conv1..conv5, fc6, fc7, fc8; biases ``bias_init`` in
conv2/4/5 and fc6/7, 0 elsewhere) and the dropout form are the recipe's to choose
(configs/alexnet_paper.yaml says which it uses and why; tools/benchmark.py learn compares them):

    paper     N(0, 0.01) everywhere: the paper's text, section 5
    code2012  conv3-5 at 0.03, the rest 0.01: Krizhevsky's layer configs (cuda-convnet2
              layers-imagenet-2gpu-model.cfg)
    caffe     fc6/fc7 at 0.005, the rest 0.01: Caffe's bvlc_alexnet

    dropout_form inverted  torch's: kept units x 1/(1-p) in training, identity at test
    dropout_form paper     the paper's (section 4.2): kept units unscaled in training, outputs
                           x (1-p) at test. The same masks from the same RNG draws.

LRN (paper section 3.3): b = a / (k + alpha * sum over 5 adjacent maps of a^2)^beta, k=2,
alpha=1e-4, beta=0.75. torch's local_response_norm divides alpha by the window size, so it is
given 5 * 1e-4.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..parallel import gather, memory_format, split_sizes

TOWERS = 2
LRN = dict(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


@dataclass(frozen=True)
class Conv:
    out: int           # both towers together
    kernel: int
    stride: int
    pad: int
    cross: bool        # input from both towers (conv1: the image, seen whole by both)
    lrn: bool
    pool: bool
    bias_one: bool     # bias initialised to bias_init (paper: 1) rather than 0


PAPER = dict(
    convs=[Conv(96, 11, 4, 2, True, True, True, False), Conv(256, 5, 1, 2, False, True, True, True),
           Conv(384, 3, 1, 1, True, False, False, False), Conv(384, 3, 1, 1, False, False, False, True),
           Conv(256, 3, 1, 1, False, False, True, True)],
    fc=[4096, 4096])
# Weight std per layer: conv1..conv5, fc6, fc7, fc8 (module docstring).
INITS = {"paper": (0.01,) * 8,
         "code2012": (0.01, 0.01, 0.03, 0.03, 0.03, 0.01, 0.01, 0.01),
         "caffe": (0.01,) * 5 + (0.005, 0.005, 0.01)}
DROPOUT_FORMS = ("inverted", "paper")
# For 28-64 px inputs (Fashion-MNIST, CIFAR): the same two-tower graph, narrower, stride 1.
SMALL = dict(
    convs=[Conv(64, 5, 1, 2, True, True, True, False), Conv(128, 5, 1, 2, False, True, True, True),
           Conv(192, 3, 1, 1, True, False, False, False), Conv(192, 3, 1, 1, False, False, False, True),
           Conv(128, 3, 1, 1, False, False, True, True)],
    fc=[1024, 1024])


def _feature_size(convs, size: int) -> int:
    for c in convs:
        size = (size + 2 * c.pad - c.kernel) // c.stride + 1
        if c.pool:
            size = (size - 3) // 2 + 1
    return size


class AlexNet(nn.Module):
    def __init__(self, spec: dict, num_classes: int, crop: int, dropout: float = 0.5,
                 bias_init: float = 1.0, mp_group=None, mp_size: int = 1, mp_rank: int = 0,
                 generator: torch.Generator | None = None, init: str = "paper",
                 dropout_form: str = "inverted"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if init not in INITS or dropout_form not in DROPOUT_FORMS:
            raise ValueError(f"init must be one of {sorted(INITS)} and dropout_form one of "
                             f"{DROPOUT_FORMS}, got {init!r}, {dropout_form!r}")
        convs = list(spec["convs"])
        if spec is PAPER and crop == 227:
            convs[0] = Conv(96, 11, 4, 0, True, True, True, False)  # 227 needs no padding for 55x55
        self.group, self.mp_size, self.mp_rank = mp_group, mp_size, mp_rank
        self.specs = convs
        side = _feature_size(convs, crop)
        if side < 1:
            raise ValueError(f"input {crop} px is too small for this AlexNet variant")
        self.convs = nn.ModuleList()
        in_full = 3
        for c in convs:
            if c.cross:
                conv = nn.Conv2d(in_full, c.out // mp_size, c.kernel, c.stride, c.pad)
            else:  # own tower: grouped in one module, plain on a tower's rank
                conv = nn.Conv2d(in_full // mp_size, c.out // mp_size, c.kernel, c.stride, c.pad,
                                 groups=TOWERS // mp_size)
            self.convs.append(conv)
            in_full = c.out
        widths = [in_full * side * side] + list(spec["fc"])
        self.fcs = nn.ModuleList(nn.Linear(widths[i], widths[i + 1] // mp_size)
                                 for i in range(len(widths) - 1))
        self.class_sizes = split_sizes(num_classes, mp_size)  # fc8 rows per tower
        self.fcs.append(nn.Linear(widths[-1], self.class_sizes[mp_rank]))
        self.drop = nn.Dropout(dropout)
        # the paper's form: the inverted dropout's output times (1 - p) is the mask alone in
        # training and x (1 - p) at test, with the same RNG draws
        self.drop_scale = 1.0 - dropout if dropout_form == "paper" else 1.0
        self.bias_one = [c.bias_one for c in convs] + [True] * len(spec["fc"]) + [False]
        self.reset_parameters(generator, bias_init, INITS[init])

    @torch.no_grad()
    def reset_parameters(self, generator, bias_init: float, stds) -> None:
        """Weights N(0, std of the layer), biases bias_init in conv2/4/5, fc6/7, else 0.
        Draws the full (mp=1) tensor and keeps this rank's part: layout-independent."""
        layers = list(self.convs) + list(self.fcs)
        fc8 = layers[-1]
        for layer, one, std in zip(layers, self.bias_one, stds, strict=True):
            full = list(layer.weight.shape)
            full[0] = sum(self.class_sizes) if layer is fc8 else full[0] * self.mp_size
            w = torch.randn(full, generator=generator) * std
            layer.weight.copy_(w.tensor_split(self.mp_size, dim=0)[self.mp_rank])
            layer.bias.fill_(bias_init if one else 0.0)

    def _lrn(self, x):
        towers = x.chunk(TOWERS // self.mp_size, dim=1)  # normalise within a tower only
        out = torch.cat([F.local_response_norm(t, **LRN) for t in towers], dim=1)
        # torch's LRN returns NCHW whatever its input: give the next conv the layout it was given
        # (one copy here, where the conv would otherwise convert or take a slower NCHW kernel)
        return out.contiguous(memory_format=memory_format(x))

    def forward(self, x):                                   # (N, 3, 224, 224)
        for i, (spec, conv) in enumerate(zip(self.specs, self.convs)):
            if spec.cross and i > 0:
                x = gather(x, self.group)                   # conv3: (N, 256, 13, 13) both towers
            x = F.relu(conv(x))                             # conv1: (N, 48 or 96, 55, 55)
            if spec.lrn:
                x = self._lrn(x)
            if spec.pool:
                x = F.max_pool2d(x, 3, 2)                   # overlapping pooling: 55 -> 27 -> 13 -> 6
        x = torch.flatten(x, 1)                             # (N, 4608 per tower)
        for i, fc in enumerate(self.fcs):
            x = fc(gather(x, self.group))                   # input from both towers
            if i < len(self.fcs) - 1:
                x = self.drop(F.relu(x))                    # fc6, fc7: (N, 2048 per tower)
                if self.drop_scale != 1.0:
                    x = x * self.drop_scale
        return gather(x, self.group, replicated=True,       # (N, num_classes) on every rank
                      sizes=self.class_sizes)
