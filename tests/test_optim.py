"""trainer.optim.build_optimizer: the one SGD setup of the trainer and the model benchmark."""
from types import SimpleNamespace

import torch

from trainer.optim import build_optimizer


def test_weight_decay_on_weights_only_and_the_config_values():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2))
    cfg = SimpleNamespace(lr=0.03, momentum=0.8, nesterov=True, weight_decay=1e-3, bias_lr_mult=1.0)
    opt = build_optimizer(model, cfg)
    decayed, plain = opt.param_groups
    conv, bn, lin = model[0], model[1], model[3]
    assert [id(p) for p in decayed["params"]] == [id(conv.weight), id(lin.weight)]
    assert {id(p) for p in plain["params"]} == {id(conv.bias), id(bn.weight), id(bn.bias), id(lin.bias)}
    assert (decayed["weight_decay"], plain["weight_decay"]) == (1e-3, 0.0)
    for group in opt.param_groups:
        assert (group["lr"], group["momentum"], group["nesterov"]) == (0.03, 0.8, True)


def test_one_step_is_sgd_with_momentum_and_decoupled_groups():
    # hand-computed: w <- w - lr * (g + wd * w) on the first step (momentum buffer = gradient)
    lin = torch.nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(2.0), lin.bias.fill_(3.0)
    opt = build_optimizer(lin, SimpleNamespace(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.5,
                                               bias_lr_mult=1.0))
    lin(torch.ones(1, 1)).sum().backward()  # d/dw = x = 1, d/db = 1
    opt.step()
    assert torch.allclose(lin.weight, torch.tensor([[2.0 - 0.1 * (1 + 0.5 * 2.0)]]))
    assert torch.allclose(lin.bias, torch.tensor([3.0 - 0.1 * 1]))  # no decay on the bias
