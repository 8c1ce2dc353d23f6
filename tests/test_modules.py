"""Each gating module against an independent reference: the formula written out with functional ops,
and the parameter count of the official code's structure."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.modules import describe_modules, module_names
from attnbench.modules.eca import adaptive_eca_kernel


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_lists_every_module_of_the_design() -> None:
    assert {"none", "se", "cbam", "eca", "dcn", "lka", "msca"} <= set(module_names())
    rows = describe_modules()
    se_reduction = next(r for r in rows if r["module"] == "se" and r["hyperparameter"] == "reduction")
    assert se_reduction["default"] == 16 and "[1, 1024]" in se_reduction["allowed"]


def test_none_is_identity() -> None:
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(build_module("none", 8)(x), x)


@pytest.mark.parametrize("reduction", [4, 16])
def test_se_matches_formula(reduction: int) -> None:
    c = 64
    se = build_module("se", c, reduction=reduction).eval()
    x = torch.randn(2, c, 7, 9)
    w1, b1 = se.reduce.weight.flatten(1), se.reduce.bias
    w2, b2 = se.expand.weight.flatten(1), se.expand.bias
    squeezed = x.mean(dim=(2, 3))
    excitation = torch.sigmoid(torch.relu(squeezed @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(se(x), x * excitation[:, :, None, None])
    hidden = c // reduction
    assert n_params(se) == 2 * c * hidden + hidden + c


def test_se_hard_sigmoid_gate_and_no_bias() -> None:
    se = build_module("se", 32, reduction=8, gate="hard_sigmoid", bias=False).eval()
    x = torch.randn(1, 32, 4, 4)
    logits = torch.relu(x.mean(dim=(2, 3)) @ se.reduce.weight.flatten(1).T) @ se.expand.weight.flatten(1).T
    torch.testing.assert_close(se(x), x * torch.clamp(logits + 3, 0, 6)[:, :, None, None] / 6)
    assert n_params(se) == 2 * 32 * 4


# timm's seresnet18 (timm.create_model, huggingface/pytorch-image-models at aa4b5850, run in scratch):
# SEModule(C) hidden widths per stage and the parameter counts of its SE modules
TIMM_SERESNET18_SE = {64: (8, 1096), 128: (8, 2184), 256: (16, 8464), 512: (32, 33312)}


@pytest.mark.parametrize("channels", sorted(TIMM_SERESNET18_SE))
def test_se_divisor_rounds_like_timm(channels: int) -> None:
    hidden, params = TIMM_SERESNET18_SE[channels]
    se = build_module("se", channels, divisor=8).eval()
    assert se.reduce.out_channels == hidden and n_params(se) == params
    assert build_module("se", channels).reduce.out_channels == channels // 16  # the paper's C // r stays the default
    x = torch.randn(2, channels, 3, 4)
    w1, b1 = se.reduce.weight.flatten(1), se.reduce.bias
    w2, b2 = se.expand.weight.flatten(1), se.expand.bias
    excitation = torch.sigmoid(torch.relu(x.mean(dim=(2, 3)) @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(se(x), x * excitation[:, :, None, None])


def test_timm_seresnet18_can_be_built() -> None:
    from attnbench import build_model

    # timm.create_model("seresnet18"): 11,779,624 parameters (its outputs equal this model's after mapping the weights)
    assert n_params(build_model("resnet18", "se", divisor=8)) == 11_779_624
    assert n_params(build_model("resnet18", "se")) == 11_779_624 - 2 * (64 * 4 + 4 + 64 * 4)  # stage 2: 4, not 8


@pytest.mark.parametrize("round_limit,hidden", [(0.0, 16), (0.9, 24)])
def test_se_round_limit_is_the_ten_percent_rule(round_limit: float, hidden: int) -> None:
    # 72 / 4 = 18 rounds to 16; timm's mobilenetv3_large_100 (round_limit 0.9) takes 24 for its first SE on 72 channels
    assert build_module("se", 72, reduction=4, divisor=8, round_limit=round_limit).reduce.out_channels == hidden


def test_se_divisor_keeps_small_maps_buildable() -> None:
    with pytest.raises(ConfigError):
        build_module("se", 8, reduction=16)
    assert build_module("se", 8, reduction=16, divisor=8).reduce.out_channels == 8  # at least one divisor


def _cbam_reference(cbam: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    mlp = cbam.channel_gate.mlp
    def shared(v: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.relu(F.linear(v, mlp[0].weight, mlp[0].bias)), mlp[2].weight, mlp[2].bias)
    channel = torch.sigmoid(shared(x.mean(dim=(2, 3))) + shared(x.amax(dim=(2, 3))))[:, :, None, None]
    refined = x * channel
    # Official ChannelPool: max first, then mean; conv without bias; then BatchNorm (eval: running stats).
    pooled = torch.cat([refined.amax(dim=1, keepdim=True), refined.mean(dim=1, keepdim=True)], dim=1)
    conv = F.conv2d(pooled, cbam.spatial_gate.conv.weight, padding=cbam.spatial_gate.conv.padding)
    bn = cbam.spatial_gate.bn
    normed = (conv - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    normed = normed * bn.weight[:, None, None] + bn.bias[:, None, None]
    return refined * torch.sigmoid(normed)


@pytest.mark.parametrize("kernel", [3, 7])
def test_cbam_matches_official_structure(kernel: int) -> None:
    c, r = 64, 16
    cbam = build_module("cbam", c, spatial_kernel=kernel).eval()
    with torch.no_grad():  # non-trivial BN statistics so the BN really takes part
        cbam.spatial_gate.bn.running_mean.fill_(0.3)
        cbam.spatial_gate.bn.running_var.fill_(2.0)
        cbam.spatial_gate.bn.weight.fill_(1.5)
        cbam.spatial_gate.bn.bias.fill_(-0.2)
    x = torch.randn(2, c, 8, 8)
    torch.testing.assert_close(cbam(x), _cbam_reference(cbam, x))
    # Official: Linear MLP with biases, spatial conv without bias, BN(1) with affine params.
    assert n_params(cbam) == 2 * c * (c // r) + c // r + c + 2 * kernel * kernel + 2


def test_cbam_differs_from_the_seed_article() -> None:
    """The seed article's spatial gate has a conv bias, no BN and mean-then-max order; the official code wins."""
    gate = build_module("cbam", 32).spatial_gate
    assert gate.conv.bias is None
    assert isinstance(gate.bn, torch.nn.BatchNorm2d)
    x = torch.randn(1, 32, 6, 6)
    weight = torch.zeros(1, 2, 7, 7)
    weight[0, 0, 3, 3] = 1.0  # picks the first pooled channel only
    with torch.no_grad():
        gate.conv.weight.copy_(weight)
        gate.bn.weight.fill_(1.0)
    gate.eval()
    expected = torch.sigmoid(x.amax(dim=1, keepdim=True) / math.sqrt(1 + gate.bn.eps))
    torch.testing.assert_close(gate(x), expected)


def test_cbam_spatial_gate_starts_uniform_as_in_the_official_init() -> None:
    cbam = build_module("cbam", 32).eval()
    assert torch.all(cbam.spatial_gate.bn.weight == 0)
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(cbam.spatial_gate(x), torch.full((2, 1, 6, 6), 0.5))


def test_cbam_orders_and_pool_types() -> None:
    x = torch.randn(2, 32, 6, 6)
    cbam = build_module("cbam", 32, reduction=4, order="spatial_channel", pool_types=["max"]).eval()
    spatial = cbam.spatial_gate(x)
    refined = x * spatial
    mlp = cbam.channel_gate.mlp
    channel = torch.sigmoid(mlp(refined.amax(dim=(2, 3))))[:, :, None, None]
    torch.testing.assert_close(cbam(x), refined * channel)
    parallel = build_module("cbam", 32, reduction=4, order="parallel").eval()
    torch.testing.assert_close(parallel(x), x * parallel.channel_gate(x) * parallel.spatial_gate(x))


@pytest.mark.parametrize("channels,expected", [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_adaptive_kernel(channels: int, expected: int) -> None:
    # eq. (12): k = |log2(C)/2 + 1/2|_odd (the paper's formula; the official code has none, it takes k as given).
    assert adaptive_eca_kernel(channels) == expected
    assert build_module("eca", channels).kernel_size == expected


@pytest.mark.parametrize("kernel", [None, 5])
def test_eca_matches_loop_over_channels(kernel: int | None) -> None:
    c = 32
    eca = build_module("eca", c, kernel_size=kernel).eval()
    k = eca.kernel_size
    x = torch.randn(2, c, 5, 5)
    pooled = x.mean(dim=(2, 3))
    w = eca.conv.weight.flatten()
    logits = torch.zeros_like(pooled)
    for ch in range(c):  # a 1-D convolution across neighbouring channels, zero padded
        for j in range(k):
            src = ch + j - (k - 1) // 2
            if 0 <= src < c:
                logits[:, ch] += w[j] * pooled[:, src]
    torch.testing.assert_close(eca(x), x * torch.sigmoid(logits)[:, :, None, None])
    assert n_params(eca) == k


def test_lka_default_structure_is_vans() -> None:
    lka = build_module("lka", 32)
    assert (lka.conv0.kernel_size, lka.conv0.padding, lka.conv0.groups) == ((5, 5), (2, 2), 32)
    assert (lka.conv_spatial.kernel_size, lka.conv_spatial.dilation, lka.conv_spatial.padding) == ((7, 7), (3, 3), (9, 9))
    assert lka.conv_spatial.groups == 32 and lka.conv1.kernel_size == (1, 1)
    c = 32
    assert n_params(lka) == (25 * c + c) + (49 * c + c) + (c * c + c)


def test_lka_matches_formula_without_sigmoid() -> None:
    c = 16
    lka = build_module("lka", c).eval()
    x = torch.randn(2, c, 12, 12)
    attn = F.conv2d(x, lka.conv0.weight, lka.conv0.bias, padding=2, groups=c)
    attn = F.conv2d(attn, lka.conv_spatial.weight, lka.conv_spatial.bias, padding=9, dilation=3, groups=c)
    attn = F.conv2d(attn, lka.conv1.weight, lka.conv1.bias)
    torch.testing.assert_close(lka(x), x * attn)


@pytest.mark.parametrize("k,d,local,dilated", [(7, 2, 3, 4), (14, 3, 5, 5), (21, 3, 5, 7), (28, 4, 7, 7)])
def test_lka_decomposition_of_van_table6(k: int, d: int, local: int, dilated: int) -> None:
    lka = build_module("lka", 8, kernel_size=k, dilation=d)
    assert lka.conv0.kernel_size == (local, local)
    assert lka.conv_spatial.kernel_size == (dilated, dilated) and lka.conv_spatial.dilation == (d, d)
    x = torch.randn(1, 8, 15, 15)
    assert lka(x).shape == x.shape


def test_lka_ablation_switches() -> None:
    x = torch.randn(1, 8, 9, 9)
    base = build_module("lka", 8).eval()
    added = build_module("lka", 8, combine="add").eval()
    added.load_state_dict(base.state_dict())
    attn = base.conv1(base.conv_spatial(base.conv0(x)))
    torch.testing.assert_close(added(x), x + attn)
    squashed = build_module("lka", 8, sigmoid=True).eval()
    squashed.load_state_dict(base.state_dict())
    torch.testing.assert_close(squashed(x), x * attn.sigmoid())
    assert build_module("lka", 8, drop_pw=True).conv1 is None
    assert build_module("lka", 8, drop_dw=True).conv0 is None


def test_msca_matches_formula() -> None:
    c = 16
    msca = build_module("msca", c).eval()
    x = torch.randn(2, c, 24, 24)
    base = F.conv2d(x, msca.conv0.weight, msca.conv0.bias, padding=2, groups=c)
    attn = base
    for branch, k in zip(msca.branches, (7, 11, 21)):
        strip = F.conv2d(base, branch[0].weight, branch[0].bias, padding=(0, k // 2), groups=c)
        attn = attn + F.conv2d(strip, branch[1].weight, branch[1].bias, padding=(k // 2, 0), groups=c)
    attn = F.conv2d(attn, msca.conv3.weight, msca.conv3.bias)
    torch.testing.assert_close(msca(x), x * attn)
    assert n_params(msca) == (25 * c + c) + sum(2 * (k * c + c) for k in (7, 11, 21)) + (c * c + c)


def test_msca_scale_subsets() -> None:
    msca = build_module("msca", 8, scales=[21, 7])
    assert [b[0].kernel_size for b in msca.branches] == [(1, 7), (1, 21)]


@pytest.mark.parametrize("name,channels,hp,key", [
    ("nope", 8, {}, "attention"),
    ("se", 8, {"ratio": 4}, "ratio"),
    ("se", 8, {"reduction": 16}, "reduction"),
    ("se", 8, {"divisor": 0}, "divisor"),
    ("se", 8, {"divisor": 8, "round_limit": 1.5}, "round_limit"),
    ("cbam", 32, {"spatial_kernel": 4}, "spatial_kernel"),
    ("cbam", 32, {"pool_types": ["avg", "median"]}, "pool_types"),
    ("eca", 32, {"kernel_size": 2}, "kernel_size"),
    ("lka", 8, {"dilation": 9}, "dilation"),
    ("msca", 8, {"scales": [7, 8]}, "scales"),
    ("dcn", 64, {"deformable_groups": 3}, "deformable_groups"),
    ("dcn", 64, {"kernel_size": 4}, "kernel_size"),
])
def test_bad_hyperparameters_name_key_value_and_allowed(name: str, channels: int, hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module(name, channels, **hp)
    assert info.value.key == key
    message = str(info.value)
    assert key in message and repr(info.value.value) in message and info.value.allowed in message
