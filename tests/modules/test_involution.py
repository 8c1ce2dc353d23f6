"""Involution against the paper's equations, the official operator's parameter counts, RedNet-50's
count, and the official code's choices (the generator's bias, the pooled kernels of strided layers)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_model, build_module, measure_complexity
from attnbench.modules import get_module_entry
from attnbench.modules.involution import Involution


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: nn.Module) -> None:
    """Random weights and biases, non-trivial BN statistics, so every term of the reference matters."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
        bn = module.reduce[1]
        bn.running_mean.copy_(0.3 * torch.randn(bn.num_features, generator=gen, dtype=bn.running_mean.dtype))
        bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=gen, dtype=bn.running_var.dtype))


def reference(module: nn.Module, x: torch.Tensor, k: int, stride: int, group_channels: int) -> torch.Tensor:
    """H_ij = W1 relu(BN(W0 x_ij)) + b1 (x average-pooled s x s when strided); Y_ijc = sum_uv H_ij[g(c), u, v] X_(si+u)(sj+v)c,
    g(c) = c // group_channels, zero padding (K-1)/2."""
    conv0, bn, conv1 = module.reduce[0], module.reduce[1], module.span
    source = F.avg_pool2d(x, stride) if stride > 1 else x
    hidden = F.conv2d(source, conv0.weight)
    hidden = (hidden - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    hidden = torch.relu(hidden * bn.weight[:, None, None] + bn.bias[:, None, None])
    kernels = F.conv2d(hidden, conv1.weight, conv1.bias)  # (N, G*K*K, h, w), group-major
    n, c, _, _ = x.shape
    h, w = kernels.shape[2:]
    per_channel = kernels.view(n, -1, k * k, h, w).repeat_interleave(group_channels, dim=1)  # (N, C, K*K, h, w)
    windows = F.unfold(x, k, padding=(k - 1) // 2, stride=stride).view(n, c, k * k, h, w)
    return (per_channel * windows).sum(dim=2)


@pytest.mark.parametrize("channels,group_channels,k,stride", [(32, 16, 3, 1), (32, 8, 5, 2), (16, 16, 7, 1), (16, 4, 7, 2)])
def test_matches_paper_equations(channels: int, group_channels: int, k: int, stride: int) -> None:
    module = build_module("involution", channels, out_channels=channels, stride=stride, kernel_size=k,
                          group_channels=group_channels, reduction=4).double().eval()
    randomise(module)
    x = torch.randn(2, channels, 6, 8, dtype=torch.float64)
    out = module(x)
    assert out.shape == (2, channels, 6 // stride, 8 // stride)
    torch.testing.assert_close(out, reference(module, x, k, stride, group_channels))


# d-li14/involution 21c3158, cls/mmcls/models/utils/involution_naive.py, run in scratch with mmcv's ConvModule
# stubbed (conv, BN, ReLU; bias only without a norm): sum(p.numel()) of involution(C, 7, 1), the same for
# stride 2; C = 32 with kernel 3 is RedNet's stem involution. With its state dict mapped (conv1.conv -> reduce.0,
# conv1.bn -> reduce.1, conv2.conv -> span) the outputs on a random (2, C, 8, 10) input, random BN statistics,
# were equal (max |diff| 0.0, float32) for C = 64, 256, kernels 7 and 3, strides 1 and 2.
@pytest.mark.parametrize("channels,kernel_size,expected", [(64, 7, 4388), (256, 7, 67472), (32, 3, 434)])
def test_parameter_count_of_the_official_operator(channels: int, kernel_size: int, expected: int) -> None:
    assert n_params(build_module("involution", channels, kernel_size=kernel_size)) == expected
    assert n_params(build_module("involution", channels, stride=2, kernel_size=kernel_size)) == expected


def test_rednet50_differs_from_resnet50_with_involution_by_the_stem_only() -> None:
    # Official RedNet(depth=50) of cls/mmcls/models/backbones/rednet.py plus its LinearClsHead (2048 -> 1000),
    # run in scratch: 15,540,806 parameters (README: 15.54 M). Its stem (3x3 conv 3->32 s2, BN, ReLU,
    # involution(32, 3), BN, ReLU, 3x3 conv 32->64, BN, ReLU) has 19,986; torchvision's 7x7 stem 9,536.
    # Its four stages loaded into this model gave the same outputs (max |diff| 0.0).
    with torch.device("meta"):  # counts and structure only: no weights need drawing
        model = build_model("resnet50", "involution")
    assert n_params(model) == 15_540_806 - 19_986 + 9_536
    block = model.layer2[0]
    assert isinstance(block.conv2, Involution) and block.conv2.stride == 2
    assert isinstance(block.bn2, nn.BatchNorm2d) and isinstance(block.act2, nn.ReLU)  # RedNet keeps norm2 and ReLU


def test_the_generator_has_a_bias_the_paper_does_not_write() -> None:
    """Paper: H = W1 sigma(W0 X); official conv2 is a ConvModule without norm, so it has a bias."""
    module = build_module("involution", 16, kernel_size=3).eval()
    assert module.reduce[0].bias is None and module.span.bias is not None
    with torch.no_grad():
        module.span.weight.zero_()
        module.span.bias.zero_()
        module.span.bias[4] = 2.0  # group 0, centre tap (taps are row-major within a group)
    x = torch.randn(1, 16, 5, 5)
    torch.testing.assert_close(module(x), 2.0 * x)


def test_taps_are_group_major() -> None:
    """The generator's K*K*G outputs are (group, tap): output 9 is group 1's first tap (official view order)."""
    module = build_module("involution", 32, kernel_size=3).eval()
    with torch.no_grad():
        module.span.weight.zero_()
        module.span.bias.zero_()
        module.span.bias[9 + 8] = 1.0  # group 1, bottom-right tap
    x = torch.randn(1, 32, 5, 6)
    out = module(x)
    assert torch.all(out[:, :16] == 0)
    torch.testing.assert_close(out[:, 16:, :-1, :-1], x[:, 16:, 1:, 1:])
    assert torch.all(out[:, 16:, -1] == 0) and torch.all(out[:, 16:, :, -1] == 0)  # zero padding


def test_strided_kernels_come_from_the_average_pooled_input() -> None:
    module = build_module("involution", 16, stride=2, kernel_size=3).eval()
    randomise(module)
    x = torch.randn(1, 16, 8, 8)
    expected = module.span(module.reduce(F.avg_pool2d(x, 2, 2)))
    captured = []
    module.span.register_forward_hook(lambda m, i, o: captured.append(o))
    assert module(x).shape == (1, 16, 4, 4)
    torch.testing.assert_close(captured[0], expected)
    with pytest.raises(ValueError):
        module(torch.randn(1, 16, 7, 8))  # the official naive operator fails on odd sizes too


def test_kernel_size_one_scales_each_position() -> None:
    module = build_module("involution", 16, kernel_size=1).eval()
    randomise(module)
    x = torch.randn(2, 16, 4, 5)
    kernels = module.span(module.reduce(x))  # one group, one tap
    torch.testing.assert_close(module(x), x * kernels)


def test_hyperparameters_shape_the_generator() -> None:
    module = build_module("involution", 64, kernel_size=5, group_channels=8, reduction=2)
    assert module.groups == 8 and module.span.out_channels == 5 * 5 * 8 and module.reduce[0].out_channels == 32
    assert build_module("involution", 64).span.out_channels == 7 * 7 * 4


def test_paper_defaults_and_registration() -> None:
    entry = get_module_entry("involution")
    assert entry.kind == "conv" and not entry.includes_norm
    assert entry.placement.stages == "all"
    assert entry.schema.defaults() == {"kernel_size": 7, "group_channels": 16, "reduction": 4}


@pytest.mark.parametrize("channels,hp,key", [
    (64, {"kernel_size": 4}, "kernel_size"),
    (64, {"kernel_size": 0}, "kernel_size"),
    (48, {"group_channels": 32}, "group_channels"),
    (8, {}, "group_channels"),
    (64, {"reduction": 128}, "reduction"),
    (64, {"group_channels": 0}, "group_channels"),
])
def test_bad_hyperparameters_name_their_key(channels: int, hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("involution", channels, **hp)
    assert info.value.key == key


def test_a_conv_that_changes_channels_is_refused_before_building() -> None:
    """An involution keeps its channels (RedNet never asks otherwise): widening basic-block convs are refused."""
    with pytest.raises(ConfigError) as info:
        build_module("involution", 16, out_channels=32, stride=2, kernel_size=3)
    assert "keep their channels" in str(info.value)
    from attnbench.config.point import make_point

    with pytest.raises(ConfigError) as info:
        make_point("cifar_resnet20", "involution")  # stage 2's first conv maps 16 to 32
    assert info.value.key == "attention"
    assert make_point("cifar_resnet20", "involution", stages=[1]).stages == (1,)
    assert make_point("resnet50", "involution").stages == (2, 3, 4, 5)


def test_official_init() -> None:
    torch.manual_seed(0)
    module = build_module("involution", 256)
    # mmcv kaiming_init: He normal, fan-out, biases 0; span: fan_out = 7 * 7 * 16 outputs
    assert module.span.weight.std().item() == pytest.approx((2 / (49 * 16)) ** 0.5, rel=0.05)
    assert module.reduce[0].weight.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.05)
    assert torch.all(module.span.bias == 0)


def test_every_product_and_summand_is_counted() -> None:
    module = build_module("involution", 32, stride=2, kernel_size=3)
    r = measure_complexity(module, (1, 32, 8, 8))
    assert r.uncounted_ops == [] and r.cross_check_rel_diff == 0
    taps = 32 * 9 * 4 * 4
    assert r.flops_by_op["mul"] == taps and r.flops_by_op["sum"] == taps  # what unfold, multiply and sum cost
