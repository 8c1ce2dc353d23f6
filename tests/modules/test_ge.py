"""Gather-Excite against functional rebuilds, the official Caffe prototxts' parameter counts, and its switches."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry
from attnbench.modules.ge import GatherExcite


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: nn.Module) -> None:
    """Random weights and BN running statistics, so every layer takes part."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.3)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)


def bn(x: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
    scale = m.weight / torch.sqrt(m.running_var + m.eps)
    return (x - m.running_mean[:, None, None]) * scale[:, None, None] + m.bias[:, None, None]


def nearest(g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize by explicit source indices floor(i * h / H)."""
    rows = torch.arange(size[0]) * g.shape[2] // size[0]
    cols = torch.arange(size[1]) * g.shape[3] // size[1]
    return g[:, :, rows][:, :, :, cols]


def box_mean(x: torch.Tensor, e: int) -> torch.Tensor:
    """Mean over (2e-1) x (2e-1) windows at stride e centred on rows/cols 0, e, 2e, ...; zeros outside count."""
    c, k = x.shape[1], 2 * e - 1
    ones = torch.ones(c, 1, k, k, dtype=x.dtype)
    return F.conv2d(x, ones, stride=e, padding=e - 1, groups=c) / (k * k)


def test_theta_minus_global_is_sigmoid_of_the_mean() -> None:
    ge = build_module("ge", 16).eval()
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(ge(x), x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True)))
    assert n_params(ge) == 0


@pytest.mark.parametrize("extent", [2, 4, 8])
def test_theta_minus_extent_matches_box_filter_and_nearest_upsampling(extent: int) -> None:
    ge = build_module("ge", 8, extent=extent).eval()
    x = torch.randn(2, 8, 13, 10, dtype=torch.float64)
    gathered = box_mean(x, extent)
    assert gathered.shape[2:] == (-(-13 // extent), -(-10 // extent))  # ceil(H/e) x ceil(W/e), figure GEPF8
    torch.testing.assert_close(ge(x), x * torch.sigmoid(nearest(gathered, (13, 10))))


def test_theta_minus_counts_padding_as_caffe_ave_pooling_does() -> None:
    """Caffe's AVE pooling divides by the full window, padding included: on ones, a corner cell of e=2
    (a 3x3 window over a 2x2 corner) averages to 4/9, not 1."""
    ge = build_module("ge", 1, extent=2).eval()
    x = torch.ones(1, 1, 4, 4)
    torch.testing.assert_close(ge(x)[0, 0, 0, 0], torch.sigmoid(torch.tensor(4 / 9)))


def test_theta_global_matches_full_map_depthwise_conv() -> None:
    torch.manual_seed(0)
    ge = GatherExcite(12, variant="theta", feature_size=(6, 5)).double().eval()
    randomise(ge)
    conv, norm = ge.gather
    x = torch.randn(2, 12, 6, 5, dtype=torch.float64)
    gathered = F.conv2d(x, conv.weight, groups=12)  # kernel 6 x 5: one value per channel
    assert gathered.shape[2:] == (1, 1) and conv.bias is None
    torch.testing.assert_close(ge(x), x * torch.sigmoid(bn(gathered, norm)))


@pytest.mark.parametrize("extent", [2, 4, 8])
def test_theta_extent_matches_strided_depthwise_chain(extent: int) -> None:
    torch.manual_seed(1)
    ge = build_module("ge", 6, variant="theta", extent=extent).double().eval()
    randomise(ge)
    convs = [m for m in ge.gather if isinstance(m, nn.Conv2d)]
    norms = [m for m in ge.gather if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == {2: 1, 4: 2, 8: 3}[extent]
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    g = x
    for i, (conv, norm) in enumerate(zip(convs, norms)):
        g = bn(F.conv2d(g, conv.weight, stride=2, padding=1, groups=6), norm)
        if i < len(convs) - 1:  # figure GEP8: DWConv+BN+ReLU, ..., DWConv+BN
            g = torch.relu(g)
    assert g.shape[2:] == (-(-11 // extent), -(-9 // extent))
    torch.testing.assert_close(ge(x), x * torch.sigmoid(nearest(g, (11, 9))))


def test_theta_plus_matches_prototxt_chain() -> None:
    torch.manual_seed(2)
    ge = GatherExcite(32, variant="theta_plus", reduction=4, feature_size=(4, 4)).double().eval()
    randomise(ge)
    conv, norm = ge.gather
    down, up = [m for m in ge.excite if isinstance(m, nn.Conv2d)]
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64)
    g = torch.relu(bn(F.conv2d(x, conv.weight, groups=32), norm)).flatten(1)
    g = F.linear(torch.relu(F.linear(g, down.weight.flatten(1), down.bias)), up.weight.flatten(1), up.bias)
    torch.testing.assert_close(ge(x), x * torch.sigmoid(g)[:, :, None, None])


@pytest.mark.parametrize("variant,channels,size,expected", [
    ("theta", 256, 56, 803328), ("theta", 512, 28, 402432),
    ("theta_plus", 256, 56, 811792), ("theta_plus", 512, 28, 435744),
    ("theta_minus", 256, 56, 0), ("theta_minus", 512, 28, 0),
])
def test_parameter_count_of_official_prototxts(variant: str, channels: int, size: int, expected: int) -> None:
    # hujie-frank/GENet ae791f8, models/RN50-GEP.prototxt (theta), RN50-GEPP.prototxt (theta_plus),
    # RN50-GEPF.prototxt (theta_minus): learnable blobs of the conv2_1 (C=256, 56x56) and conv3_1
    # (C=512, 28x28) gather/excite layers, counted by a scratch prototxt reader (convs, BN scale and bias);
    # a scratch interpreter of those layers matched this module to 2e-15 (float64) after copying the blobs.
    assert n_params(GatherExcite(channels, variant=variant, feature_size=(size, size))) == expected


@pytest.mark.parametrize("channels,expected", [(64, 2112), (256, 8448)])
def test_parameter_count_of_theta_extent_8_figure(channels: int, expected: int) -> None:
    # figure GEP8.jpg of hujie-frank/GENet (no prototxt was released for it): three 3x3 depthwise
    # convs without bias and three BNs.
    assert n_params(build_module("ge", channels, variant="theta", extent=8)) == expected


def test_official_fillers_and_bn_settings() -> None:
    torch.manual_seed(3)
    ge = GatherExcite(256, variant="theta_plus", feature_size=(14, 14))
    conv, norm = ge.gather
    down, up = [m for m in ge.excite if isinstance(m, nn.Conv2d)]
    assert abs(conv.weight.std().item() - (2 / 196) ** 0.5) < 0.01  # msra: std sqrt(2 / fan_in)
    assert abs(down.weight.std().item() - 0.01) < 0.002 and torch.all(down.bias == 0) and torch.all(up.bias == 0)
    assert norm.momentum == 0.05 and norm.eps == 1e-5  # Caffe moving_average_fraction 0.95
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_defaults_and_bad_values() -> None:
    assert get_module_entry("ge").schema.defaults() == {"variant": "theta_minus", "extent": None, "reduction": 16}
    cases = [
        ({"variant": "theta", "extent": 3}, "extent"),
        ({"variant": "theta_plus", "extent": 4}, "extent"),
        ({"variant": "theta_plus", "reduction": 64}, "reduction"),
        ({"variant": "theta"}, "feature_size"),  # global depthwise kernel without the map size
        ({"extent": 1}, "extent"),
        ({"variant": "theta++"}, "variant"),
    ]
    for hp, key in cases:
        with pytest.raises(ConfigError) as info:
            build_module("ge", 32, **hp)
        assert info.value.key == key, hp
    assert build_module("ge", 32, extent=3).extent == 3  # the pooling gather takes any extent
