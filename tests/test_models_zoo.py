"""The single-module models against torchvision's published numbers and layouts (written out here,
not read from the code), their init schemes, seeded determinism, and one short fit per small model.
CPU only; the big models are built once each and run one small forward."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.models.zoo import BUILDERS

SMALL = ["alexnet_owt_small", "vgg16_small", "resnet50_small", "cifar_cnn"]

# torchvision.models.<name>(): sum of p.numel() over parameters(), as published.
TORCHVISION_PARAMS = {"alexnet_owt": 61_100_840, "vgg16": 138_357_544, "resnet50": 25_557_032}

# torchvision.models.alexnet().state_dict(): every key and shape, in order.
ALEXNET_STATE = [
    ("features.0.weight", (64, 3, 11, 11)), ("features.0.bias", (64,)),
    ("features.3.weight", (192, 64, 5, 5)), ("features.3.bias", (192,)),
    ("features.6.weight", (384, 192, 3, 3)), ("features.6.bias", (384,)),
    ("features.8.weight", (256, 384, 3, 3)), ("features.8.bias", (256,)),
    ("features.10.weight", (256, 256, 3, 3)), ("features.10.bias", (256,)),
    ("classifier.1.weight", (4096, 9216)), ("classifier.1.bias", (4096,)),
    ("classifier.4.weight", (4096, 4096)), ("classifier.4.bias", (4096,)),
    ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,)),
]
# torchvision.models.vgg16(): the indices of its 13 convs and 3 linears.
VGG16_WEIGHTED = ([f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
                  + [f"classifier.{i}" for i in (0, 3, 6)])


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module", params=sorted(TORCHVISION_PARAMS))
def big(request):
    """(name, model) for each 1000-class model, built once with seed 0."""
    return request.param, BUILDERS[request.param](1000, 0.5, seeded(0)).eval()


def test_every_builder_is_documented_and_every_configured_model_builds():
    """The names a user reads (README) and writes (configs/*.yaml) against the names that build."""
    from pathlib import Path

    import yaml

    from trainer.models import build_model
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    missing = [name for name in BUILDERS if f"`{name}`" not in readme and name not in readme]
    assert not missing, f"builders not named in README.md: {missing}"
    for path in sorted((root / "configs").glob("*.yaml")):
        name = yaml.safe_load(path.read_text()).get("model", "alexnet")
        build_model(name, 10, 224 if "small" not in name and "cifar" not in name else 32, dropout=0.0)


def test_small_bn_shapes_and_parameter_count():
    import torch
    model = BUILDERS["small_bn"](10, 0.0, torch.Generator().manual_seed(0))
    # convs 3*32*9 + 32*64*9 + 64*128*9 + 128*128*9, BN 2*(32+64+128+128), linear 128*9*10 + 10
    assert sum(p.numel() for p in model.parameters()) == 864 + 18432 + 73728 + 147456 + 704 + 11530
    for side in (24, 28, 32):
        assert model(torch.randn(2, 3, side, side)).shape == (2, 10)


def test_big_model_parameter_count_is_torchvisions(big):
    name, model = big
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]


def test_big_model_forward_224(big):
    name, model = big
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))  # vgg16: ~15 GFLOPs a sample, under a second here
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_vgg16_runs_on_32px():
    model = BUILDERS["vgg16"](10, 0.5, seeded(0)).eval()  # 7x7 avgpool repeats the 1x1 map
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_alexnet_owt_state_dict_is_torchvisions():
    model = BUILDERS["alexnet_owt"](1000, 0.5, seeded(0))
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == ALEXNET_STATE


def test_vgg16_and_resnet50_names_are_torchvisions():
    vgg = BUILDERS["vgg16"](1000, 0.5, seeded(0))
    assert [n for n, m in vgg.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == VGG16_WEIGHTED
    resnet = BUILDERS["resnet50"](1000, 0.5, seeded(0))
    state = resnet.state_dict()
    # 53 convs (stem, 16 blocks x 3, 4 downsamples) + 53 BNs x (weight, bias, 3 buffers) + fc (2)
    assert len(state) == 53 + 53 * 5 + 2
    assert tuple(state["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(state["layer4.2.bn3.running_var"].shape) == (2048,)
    assert tuple(state["fc.weight"].shape) == (1000, 2048)
    block = resnet.layer2[0]  # v1.5: the stride sits on the 3x3 conv, not the first 1x1
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def test_alexnet_owt_init_is_pytorch_default():
    """torchvision's AlexNet, written out, built with PyTorch's own init from the global RNG."""
    torch.manual_seed(3)
    reference = nn.Sequential(  # registration order as torchvision's: features, avgpool, classifier
        nn.Conv2d(3, 64, 11, 4, 2), nn.Conv2d(64, 192, 5, padding=2), nn.Conv2d(192, 384, 3, padding=1),
        nn.Conv2d(384, 256, 3, padding=1), nn.Conv2d(256, 256, 3, padding=1),
        nn.Linear(9216, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000))
    model = BUILDERS["alexnet_owt"](1000, 0.5, seeded(3))
    for ours, theirs in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


# input side -> does the model accept it (documented in each builder's docstring)
SMALL_SIZES = {"alexnet_owt_small": {32: True, 28: True, 64: True},
               "vgg16_small": {32: True, 28: False, 64: True},
               "resnet50_small": {32: True, 28: True, 64: True},
               "cifar_cnn": {32: True, 28: False}}


@pytest.mark.parametrize("name,side,ok", [(n, s, ok) for n, d in SMALL_SIZES.items() for s, ok in d.items()])
def test_small_model_output_shape(name, side, ok):
    model = BUILDERS[name](10, 0.5, seeded(0)).eval()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        if ok:
            assert model(x).shape == (2, 10)
        else:
            with pytest.raises(RuntimeError):
                model(x)


@pytest.mark.parametrize("name,count", [
    # torchvision's AlexNet convs (2,469,696) with a 5x5 conv1, then fc 1024-1024-10
    ("alexnet_owt_small", 2_469_696 - 11 * 11 * 3 * 64 + 5 * 5 * 3 * 64
     + sum(i * o + o for i, o in ((256 * 2 * 2, 1024), (1024, 1024), (1024, 10)))),
    # VGG-16's 13 convs (14,714,688), a BN (weight, bias) per conv, fc 512-512-10
    ("vgg16_small", 14_714_688 + 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)
     + 512 * 512 + 512 + 512 * 10 + 10),
    # resnet50 with a 3x3 stem instead of 7x7 and a 2048 x 10 fc
    ("resnet50_small", 25_557_032 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 - 2048 * 1000 - 1000 + 2048 * 10 + 10),
    # convs (3x3 + bias) 3-64-64-128-256, dense 4096-512-512-10
    ("cifar_cnn", sum(9 * i * o + o for i, o in ((3, 64), (64, 64), (64, 128), (128, 256)))
     + sum(i * o + o for i, o in ((4096, 512), (512, 512), (512, 10)))),
])
def test_small_model_parameter_count(name, count):
    assert sum(p.numel() for p in BUILDERS[name](10, 0.5, seeded(0)).parameters()) == count


@pytest.mark.parametrize("name", SMALL)
def test_same_seed_same_weights_and_global_rng_untouched(name):
    before = torch.get_rng_state()
    a = BUILDERS[name](num_classes=10, dropout=0.5, generator=seeded(7)).state_dict()
    b = BUILDERS[name](num_classes=10, dropout=0.5, generator=seeded(7)).state_dict()
    c = BUILDERS[name](num_classes=10, dropout=0.5, generator=seeded(8)).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    random = [k for k in a if k.endswith("weight") and a[k].dim() > 1]  # every conv and linear
    assert random and not any(torch.equal(a[k], c[k]) for k in random)


def test_no_generator_draws_from_the_global_rng():
    torch.manual_seed(5)
    a = BUILDERS["cifar_cnn"](10, 0.5, None).state_dict()
    torch.manual_seed(5)
    b = BUILDERS["cifar_cnn"](10, 0.5, None).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _weighted(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def _assert_bn_reset(model):
    for bn in _weighted(model, nn.BatchNorm2d):
        assert (bn.weight == 1).all() and (bn.bias == 0).all()
        assert (bn.running_mean == 0).all() and (bn.running_var == 1).all() and bn.num_batches_tracked == 0


def _fan_out(w):  # out channels x kernel area (1 for a linear)
    return w.shape[0] * w[0, 0].numel()


def test_vgg_init_is_torchvisions():
    model = BUILDERS["vgg16_small"](10, 0.5, seeded(0))
    for conv in _weighted(model, nn.Conv2d):
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / _fan_out(conv.weight)), rel=0.1)
        assert (conv.bias == 0).all()
    for fc in _weighted(model, nn.Linear):
        assert fc.weight.std().item() == pytest.approx(0.01, rel=0.1) and (fc.bias == 0).all()
    _assert_bn_reset(model)


def test_resnet_init_is_torchvisions():
    model = BUILDERS["resnet50_small"](10, 0.5, seeded(0))
    for conv in _weighted(model, nn.Conv2d):
        assert conv.bias is None
        if conv.weight.numel() >= 4096:  # enough samples for a 10% std estimate
            assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / _fan_out(conv.weight)), rel=0.1)
    _assert_bn_reset(model)
    bound = 1 / math.sqrt(2048)  # nn.Linear's default init
    assert model.fc.weight.abs().max() <= bound and model.fc.bias.abs().max() <= bound
    assert model.fc.weight.abs().max() > 0.9 * bound


def test_cifar_cnn_init_is_glorot_uniform():
    model = BUILDERS["cifar_cnn"](10, 0.5, seeded(0))
    for layer in _weighted(model, (nn.Conv2d, nn.Linear)):
        w = layer.weight
        bound = math.sqrt(6 / (w[0].numel() + _fan_out(w)))
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert (layer.bias == 0).all()


# SGD learning rates for a quick fit of one random batch: ResNet-50's BN over 4 samples and deep
# stack overshoot above ~0.003; the AlexNet, with PyTorch's small default init, moves slowly below 0.1.
FIT_LR = {"alexnet_owt_small": 0.1, "vgg16_small": 0.01, "resnet50_small": 0.003, "cifar_cnn": 0.01}


@pytest.mark.parametrize("name", SMALL)
def test_small_model_fits_a_batch(name):
    g = seeded(100)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
    model = BUILDERS[name](10, 0.0, seeded(0))  # no dropout: the loss is a function of the weights
    opt = torch.optim.SGD(model.parameters(), lr=FIT_LR[name], momentum=0.9)
    first = None
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < first - 0.05
