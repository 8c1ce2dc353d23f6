"""SK convolution against the paper's equations (1)-(6) written out, and the official SKNet-50 prototxt's counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench.core.errors import ConfigError
from attnbench.modules import build_module, get_module_entry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomise(module: nn.Module) -> None:
    """Random weights and non-trivial BN statistics, so every term of the reference matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype) * 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen, dtype=m.weight.dtype))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen, dtype=m.bias.dtype))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen, dtype=m.running_mean.dtype))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen, dtype=m.running_var.dtype))


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Inference BN written out: (x - mean) / sqrt(var + eps) * gamma + beta."""
    shape = (1, -1, 1, 1)
    normalized = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return normalized * bn.weight.view(shape) + bn.bias.view(shape)


def _reference(module: nn.Module, x: torch.Tensor, kernels: tuple[int, ...], stride: int, groups: int) -> torch.Tensor:
    """Split: U_m = ReLU(BN(conv_m(X))), kernel k as 3x3 with dilation (k-1)/2; Fuse: s = GAP(sum U_m),
    z = ReLU(BN(W s)); Select: a_m = softmax_m(A_m z) per channel; V = sum_m a_m U_m."""
    features = []
    for branch, k in zip(module.branches, kernels):
        d = (k - 1) // 2
        u = F.conv2d(x, branch[0].weight, stride=stride, padding=d, dilation=d, groups=groups)
        features.append(torch.relu(_bn(u, branch[1])))
    u = torch.stack(features).sum(dim=0)
    s = u.mean(dim=(2, 3))
    z = torch.relu(_bn((s @ module.fuse[0].weight.flatten(1).T)[:, :, None, None], module.fuse[1])).flatten(1)
    c = u.shape[1]
    a_all = module.select.weight.flatten(1)  # rows m*C .. (m+1)*C - 1 are A_m
    logits = torch.stack([z @ a_all[m * c:(m + 1) * c].T for m in range(len(kernels))], dim=0)
    attention = torch.exp(logits) / torch.exp(logits).sum(dim=0, keepdim=True)
    return sum(attention[m][:, :, None, None] * features[m] for m in range(len(kernels)))


@pytest.mark.parametrize("kernels,stride,cin,cout,groups", [
    ((3, 5), 1, 8, 8, 4),
    ((3, 5), 2, 8, 12, 4),
    ((3, 5, 7), 1, 6, 6, 2),
])
def test_matches_paper_equations(kernels, stride, cin, cout, groups):
    module = build_module("sk", cin, out_channels=cout, stride=stride, kernels=kernels, groups=groups, min_dim=3).double().eval()
    _randomise(module)
    x = torch.randn(2, cin, 7, 8, dtype=torch.float64)
    expected = _reference(module, x, kernels, stride, groups)
    assert expected.shape == (2, cout, (7 - 1) // stride + 1, (8 - 1) // stride + 1)
    torch.testing.assert_close(module(x), expected)


# implus/SKNet models/sknet50.prototxt: the SK layers of one unit (conv?_?/3x3g32 and its bn,
# 3x3g32d2 and its bn, B_fc1, B_fc1/bn, B_fc2), built by parsing the prototxt and summing the
# blob sizes of the learnable params (conv weights; BN scale and bias); conv2_1 has C = 128,
# conv3_1 C = 256, conv5_1 C = 1024 (d = 64 there, C/r over L). The same script ran that graph
# and this module on one input with the weights copied over: outputs equal (max |diff| 0).
@pytest.mark.parametrize("channels,expected", [(128, 22_080), (256, 62_528), (1024, 790_656)])
def test_parameter_count_of_the_official_prototxt(channels, expected):
    assert n_params(build_module("sk", channels)) == expected


def test_fuse_width_is_max_of_c_over_r_and_l():
    assert build_module("sk", 128).fuse[0].out_channels == 32  # 128 // 16 = 8 < L
    assert build_module("sk", 1024).fuse[0].out_channels == 64
    assert build_module("sk", 128, reduction=2, min_dim=8).fuse[0].out_channels == 64
    assert build_module("sk", 128, reduction=2, min_dim=8).select.out_channels == 256


def test_paper_defaults():
    entry = get_module_entry("sk")
    assert entry.kind == "conv"
    assert entry.schema.defaults() == {
        "kernels": (3, 5), "dilated": True, "groups": 32, "reduction": 16, "min_dim": 32, "select": True,
    }


def test_official_layout_no_bias_stride_in_every_branch():
    module = build_module("sk", 64, out_channels=64, stride=2)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.bias is None for conv in convs)  # every Convolution has bias_term: false
    (c3, c5) = (module.branches[0][0], module.branches[1][0])
    assert (c3.kernel_size, c3.dilation, c3.padding, c3.stride, c3.groups) == ((3, 3), (1, 1), (1, 1), (2, 2), 32)
    assert (c5.kernel_size, c5.dilation, c5.padding, c5.stride, c5.groups) == ((3, 3), (2, 2), (2, 2), (2, 2), 32)
    assert [type(m) for m in module.branches[1]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_official_fillers():
    torch.manual_seed(0)
    module = build_module("sk", 1024)
    # Caffe msra: std sqrt(2 / fan_in), fan_in = C/G * 3 * 3 = 288; B_fc1 / B_fc2: gaussian std 0.01
    assert module.branches[0][0].weight.std().item() == pytest.approx((2 / 288) ** 0.5, rel=0.02)
    assert module.fuse[0].weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert module.select.weight.std().item() == pytest.approx(0.01, rel=0.02)


def test_select_rows_are_branch_major():
    """The prototxt reshapes B_fc2's M*C outputs to (M, C): the first C logits belong to the 3x3 branch."""
    module = build_module("sk", 8, groups=2, min_dim=4).double().eval()
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        module.fuse[1].bias.fill_(1.0)  # z > 0
        module.select.weight.zero_()
        module.select.weight[:8] = 50.0  # branch-0 logits huge: softmax picks the 3x3 branch
        torch.testing.assert_close(module(x), module.branches[0](x))


def test_output_has_no_bn_after_the_unit():
    """V is a convex combination of ReLU outputs (SKNet-50 feeds it straight into 1x1_increase)."""
    module = build_module("sk", 8, groups=2, min_dim=4).eval()
    _randomise(module)
    out = module(torch.randn(2, 8, 5, 5))
    assert (out >= 0).all()


def test_without_select_the_branches_are_summed():
    module = build_module("sk", 8, groups=2, select=False).eval()
    _randomise(module)
    assert module.fuse is None and module.select is None
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(module(x), module.branches[0](x) + module.branches[1](x))


def test_undilated_kernels_are_plain_k_by_k():
    module = build_module("sk", 8, groups=2, kernels=[7, 3], dilated=False).eval()
    assert [(b[0].kernel_size, b[0].dilation, b[0].padding) for b in module.branches] == [
        ((3, 3), (1, 1), (1, 1)), ((7, 7), (1, 1), (3, 3)),
    ]
    dilated = build_module("sk", 8, groups=2, kernels=[3, 7]).eval()
    assert dilated.branches[1][0].dilation == (3, 3) and dilated.select.out_channels == 16
    x = torch.randn(1, 8, 9, 9)
    assert module(x).shape == dilated(x).shape == x.shape


@pytest.mark.parametrize("channels,hp,key", [
    (48, {"groups": 32}, "groups"),
    (64, {"kernels": [3, 4]}, "kernels"),
    (64, {"kernels": [3, 3]}, "kernels"),
    (64, {"reduction": 0}, "reduction"),
    (64, {"min_dim": 0}, "min_dim"),
    (64, {"select": 1}, "select"),
])
def test_bad_hyperparameters_name_their_key(channels, hp, key):
    with pytest.raises(ConfigError) as info:
        build_module("sk", channels, **hp)
    assert info.value.key == key


def test_groups_must_divide_the_output_channels_too():
    with pytest.raises(ConfigError) as info:
        build_module("sk", 64, out_channels=48)
    assert info.value.key == "groups"
