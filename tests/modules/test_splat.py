"""Split-attention conv against the ResNeSt paper's equations written out per cardinal group and split,
and the official SplAtConv2d's parameter counts."""
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
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype) * 0.4)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype) * 0.4)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen, dtype=m.weight.dtype))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen, dtype=m.bias.dtype))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen, dtype=m.running_mean.dtype))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen, dtype=m.running_var.dtype))


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, lo: int, hi: int) -> torch.Tensor:
    """Inference BN of channels lo..hi-1 of `bn`, on x of (N, hi-lo, ...) written out."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = bn.running_mean[lo:hi].view(shape), bn.running_var[lo:hi].view(shape)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight[lo:hi].view(shape) + bn.bias[lo:hi].view(shape)


def _avg3x3(x: torch.Tensor, stride: int) -> torch.Tensor:
    """3x3 mean with one ring of zeros counted in (nn.AvgPool2d(3, s, padding=1) defaults)."""
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[2:]
    total = sum(padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3))
    return (total / 9)[:, :, ::stride, ::stride]


def _reference(
    module: nn.Module, x: torch.Tensor, radix: int, groups: int, stride: int, avd: bool, avd_first: bool
) -> torch.Tensor:
    """Per cardinal group k: U_{k,r} = ReLU(BN(conv_r^k X)) for r < R (radix-major: input slice r*K + k);
    s^k = GAP(sum_r U_{k,r}); a^k = r-softmax(W2^k ReLU(BN(W1^k s^k + b1^k)) + b2^k); V^k = sum_r a^k_r U_{k,r}."""
    pool = stride if avd else 1
    if pool > 1 and avd_first:
        x = _avg3x3(x, pool)
    cin = x.shape[1]
    c = module.out_channels
    cg, ing = c // groups, cin // (groups * radix)
    inter = module.fc1.out_channels
    ig = inter // groups
    w1, w2 = module.fc1.weight.flatten(1), module.fc2.weight.flatten(1)
    outputs = []
    for k in range(groups):
        splits = []
        for r in range(radix):
            g = r * groups + k
            u = F.conv2d(x[:, g * ing:(g + 1) * ing], module.conv.weight[g * cg:(g + 1) * cg], stride=stride // pool, padding=1)
            splits.append(torch.relu(_bn(u, module.bn0, g * cg, (g + 1) * cg)))
        s = torch.stack(splits).sum(dim=0).mean(dim=(2, 3))  # (N, C/K)
        z = s @ w1[k * ig:(k + 1) * ig].T + module.fc1.bias[k * ig:(k + 1) * ig]
        z = torch.relu(_bn(z, module.bn1, k * ig, (k + 1) * ig))
        rows = slice(k * radix * cg, (k + 1) * radix * cg)
        logits = (z @ w2[rows].T + module.fc2.bias[rows]).view(-1, radix, cg)  # r-major within group k
        if radix == 1:
            a = 1 / (1 + torch.exp(-logits))
        else:
            a = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
        outputs.append(sum(a[:, r, :, None, None] * splits[r] for r in range(radix)))
    out = torch.cat(outputs, dim=1)
    if pool > 1 and not avd_first:
        out = _avg3x3(out, pool)
    return out


@pytest.mark.parametrize("radix,groups,stride,avd,avd_first,cin,cout", [
    (2, 1, 1, True, False, 8, 8),
    (2, 2, 2, True, False, 8, 12),
    (3, 2, 2, True, True, 12, 8),
    (1, 2, 1, True, False, 8, 8),
    (2, 1, 2, False, False, 8, 8),
])
def test_matches_paper_equations(radix, groups, stride, avd, avd_first, cin, cout):
    module = build_module("splat", cin, out_channels=cout, stride=stride, radix=radix, groups=groups,
                          avd=avd, avd_first=avd_first)
    module = module.double().eval()
    _randomise(module)
    x = torch.randn(2, cin, 7, 6, dtype=torch.float64)
    expected = _reference(module, x, radix, groups, stride, avd, avd_first)
    assert expected.shape == (2, cout, (7 - 1) // stride + 1, (6 - 1) // stride + 1)
    torch.testing.assert_close(module(x), expected)


# zhanghang1989/ResNeSt resnest/torch/models/splat.py: SplAtConv2d(C, C, kernel_size=3, padding=1,
# groups=K, bias=False, radix=R, norm_layer=nn.BatchNorm2d), as Bottleneck builds it, built and
# counted in a scratch script; weights loaded into this module from its state dict (same keys)
# gave the same output as the official Bottleneck's conv2 (+ avd_layer) path (max |diff| 0).
@pytest.mark.parametrize("channels,hp,expected", [
    (64, {}, 43_488),
    (256, {}, 690_048),
    (64, {"radix": 4}, 58_304),
    (80, {"groups": 2}, 34_200),
    (64, {"radix": 1}, 41_248),
])
def test_parameter_count_of_the_official_code(channels, hp, expected):
    assert n_params(build_module("splat", channels, **hp)) == expected


def test_paper_defaults():
    entry = get_module_entry("splat")
    assert entry.kind == "conv"
    assert entry.schema.defaults() == {"radix": 2, "groups": 1, "reduction": 4, "avd": True, "avd_first": False}


def test_official_layout():
    module = build_module("splat", 64, out_channels=64)
    conv = module.conv
    assert (conv.out_channels, conv.groups, conv.kernel_size, conv.padding, conv.bias) == (128, 2, (3, 3), (1, 1), None)
    assert module.fc1.bias is not None and module.fc2.bias is not None  # default nn.Conv2d bias in splat.py
    assert (module.fc1.in_channels, module.fc1.out_channels, module.fc2.out_channels) == (64, 32, 128)
    assert build_module("splat", 256).fc1.out_channels == 128  # max(256 * 2 // 4, 32)
    assert build_module("splat", 64, reduction=16).fc1.out_channels == 32  # the floor of 32


def test_avd_strides_by_pooling_and_conv_stride_without_it():
    pooled = build_module("splat", 8, stride=2)
    assert pooled.conv.stride == (1, 1) and pooled.pool_stride == 2
    strided = build_module("splat", 8, stride=2, avd=False)
    assert strided.conv.stride == (2, 2) and strided.pool_stride == 1
    assert build_module("splat", 8).pool_stride == 1  # no pool in a stride-1 block


def test_output_is_not_normalised_after_the_unit():
    """BN and ReLU sit inside (bn0 before the attention); the weighted sum of ReLU outputs is >= 0."""
    module = build_module("splat", 16).eval()
    _randomise(module)
    assert (module(torch.randn(2, 16, 5, 5)) >= 0).all()


def test_official_init():
    torch.manual_seed(0)
    module = build_module("splat", 256)
    # resnet.py: normal(0, sqrt(2 / (k * k * out_channels))) for every Conv2d
    assert module.conv.weight.std().item() == pytest.approx((2 / (9 * 512)) ** 0.5, rel=0.02)
    assert module.fc1.weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.02)
    assert module.fc2.weight.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.02)


@pytest.mark.parametrize("channels,hp,key", [
    (64, {"radix": 0}, "radix"),
    (64, {"groups": 3}, "groups"),
    (64, {"radix": 3}, "radix"),  # K * R must divide C_in
    (64, {"radix": 4, "groups": 32}, "groups"),
    (96, {"groups": 3, "reduction": 16}, "groups"),  # c' = max(96 * 2 // 16, 32) = 32: not in 3 groups
    (64, {"avd": "yes"}, "avd"),
])
def test_bad_hyperparameters_name_their_key(channels, hp, key):
    with pytest.raises(ConfigError) as info:
        build_module("splat", channels, **hp)
    assert info.value.key == key
