"""Initialisation and the recipe knobs of the paper AlexNet, against hand-written values: the per-
layer stds of each init, the biases, the dropout forms, the bias learning-rate multiplier; and
VGG-16 / ResNet-50 against torchvision's published init rules (written out here, not imported:
torchvision does not import beside this torch)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from trainer.config import Config, check_resume, make_config, to_dict
from trainer.models import build_model
from trainer.optim import build_optimizer, set_lr

# conv1..conv5, fc6, fc7, fc8: the std each init's source gives, and which biases start at bias_init
STDS = {"paper": [0.01] * 8,                                       # the paper, section 5
        "code2012": [0.01, 0.01, 0.03, 0.03, 0.03, 0.01, 0.01, 0.01],  # layers-imagenet-2gpu-model.cfg
        "caffe": [0.01] * 5 + [0.005, 0.005, 0.01]}                # bvlc_alexnet train_val.prototxt
BIAS_ONE = [False, True, False, True, True, True, True, False]


def _layers(model):
    return list(model.convs) + list(model.fcs)


@pytest.mark.parametrize("init", sorted(STDS))
def test_each_layer_gets_its_std_and_bias(init):
    model = build_model("alexnet", 1000, 224, init=init, bias_init=0.25, seed=3)
    for k, (layer, std, one) in enumerate(zip(_layers(model), STDS[init], BIAS_ONE)):
        w = layer.weight.detach().double()
        assert abs(w.mean().item()) < 4 * std / math.sqrt(w.numel()), k
        assert w.std().item() == pytest.approx(std, rel=0.05 if w.numel() < 50_000 else 0.01), k
        assert torch.all(layer.bias == (0.25 if one else 0.0)), k


def test_paper_dropout_is_unscaled_in_training_and_halved_at_test():
    """fc6's dropout output (fc7's input, through a hook): the same masks as torch's dropout (the
    same RNG draws) without its x2 in training, and x0.5 at test."""
    outs = {}
    for form in ("inverted", "paper"):
        model = build_model("alexnet_small", 10, 32, init="paper", dropout_form=form, seed=1)
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        grabbed = []
        hook = model.fcs[1].register_forward_pre_hook(lambda m, a: grabbed.append(a[0].detach()))
        torch.manual_seed(5)
        model.train()(x)
        model.eval()(x)
        hook.remove()
        outs[form] = grabbed
    (inv_train, inv_test), (pap_train, pap_test) = outs["inverted"], outs["paper"]
    assert (inv_train == 0).float().mean() == pytest.approx(0.5, abs=0.05)  # half the units dropped
    torch.testing.assert_close(pap_train, inv_train * 0.5)  # kept units unscaled: inverted's x2 undone
    torch.testing.assert_close(pap_test, inv_test * 0.5)    # at test: x (1 - p)
    assert (inv_test > 0).float().mean() > 0.9              # no mask at test


def test_paper_dropout_at_test_halves_each_dropout_output():
    """At test the paper form equals the inverted network with each dropout's output times 0.5:
    with fc6 -> fc7 -> fc8 linear pieces, the logits follow the hand-computed path."""
    model = build_model("alexnet_small", 10, 32, init="paper", dropout_form="paper", seed=2).eval()
    ref = build_model("alexnet_small", 10, 32, init="paper", dropout_form="inverted", seed=2).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grabbed = []  # fc6's input: the flattened conv features, the same in both forms
    hook = ref.fcs[0].register_forward_pre_hook(lambda m, a: grabbed.append(a[0].detach()))
    ref(x)
    hook.remove()
    fc6, fc7, fc8 = ref.fcs
    h = 0.5 * torch.relu(fc6(grabbed[0]))
    h = 0.5 * torch.relu(fc7(h))
    torch.testing.assert_close(model(x), fc8(h))


def test_biases_learn_at_twice_the_rate():
    """One plain SGD step (no momentum, no decay): each bias moves by lr x 2 x its gradient, each
    weight by lr x its gradient; set_lr keeps the ratio when the schedule changes the rate."""
    cfg = Config(data="-", lr=0.1, momentum=0.0, weight_decay=0.0, bias_lr_mult=2.0)
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, cfg)
    set_lr(opt, 0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.ones(1, 3)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    torch.testing.assert_close(model.weight.detach(), before["weight"] - 0.05 * grads["weight"])
    torch.testing.assert_close(model.bias.detach(), before["bias"] - 0.1 * grads["bias"])


def test_init_keys_are_refused_for_models_that_have_their_own():
    with pytest.raises(ValueError, match="paper AlexNet"):
        make_config(None, data="-", model="vgg16", init="caffe")
    with pytest.raises(ValueError, match="bias_lr_mult must be > 0"):
        make_config(None, data="-", bias_lr_mult=0)


def test_a_checkpoint_from_before_the_new_keys_resumes():
    """A config saved before init, dropout_form, bias_lr_mult and stall_steps existed ran with
    their defaults: resuming it with the defaults changes nothing, with other values is refused."""
    old = {k: v for k, v in to_dict(Config(data="d")).items()
           if k not in ("init", "dropout_form", "bias_lr_mult", "stall_steps")}
    assert check_resume(old, Config(data="d")) == []
    with pytest.raises(ValueError, match="init"):
        check_resume(old, Config(data="d", init="caffe"))


# -- VGG-16 and ResNet-50: torchvision's rules (vgg.py and resnet.py of torchvision.models) --------

def _kaiming_fan_out_std(conv: nn.Conv2d) -> float:
    """kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / fan_out), fan_out =
    out_channels x kernel area."""
    return math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))


def _check_conv(conv: nn.Conv2d):
    w = conv.weight.detach().double()
    assert w.std().item() == pytest.approx(_kaiming_fan_out_std(conv), rel=0.06 if w.numel() < 20_000 else 0.02)
    assert abs(w.mean().item()) < 5 * _kaiming_fan_out_std(conv) / math.sqrt(w.numel())
    if conv.bias is not None:
        assert torch.all(conv.bias == 0)


def test_vgg16_follows_torchvision_init():
    """Convs kaiming normal fan_out, biases 0; Linear N(0, 0.01), biases 0."""
    model = build_model("vgg16", 1000, 224, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 13 and len(linears) == 3
    for conv in convs:
        _check_conv(conv)
    for fc in linears:
        assert fc.weight.detach().double().std().item() == pytest.approx(0.01, rel=0.02)
        assert torch.all(fc.bias == 0)


def test_resnet50_follows_torchvision_init():
    """Convs kaiming normal fan_out (no bias); BatchNorm weight 1, bias 0 (no zero-init of the
    last BN of a block); fc PyTorch's Linear default: U(+-1/sqrt(fan_in)) for weight and bias."""
    model = build_model("resnet50", 1000, 224, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 53 and len(bns) == 53
    for conv in convs:
        _check_conv(conv)
    for bn in bns:
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    fc = model.fc
    bound = 1 / math.sqrt(fc.in_features)
    w = fc.weight.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.01)  # uniform's std
    assert np.abs(fc.bias.detach().numpy()).max() <= bound
