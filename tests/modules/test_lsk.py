"""LSK module against the LSKNet paper's equations (3)-(10) written out, the official LSKblock's
parameter counts, LSKNet-T/S as van_b0/van_b1 with LSK in the mixer slot, and its hyperparameters."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.backbones.registry import default_placement, get_backbone_entry
from attnbench.backbones.van import VAN_CONFIGS, VisualAttentionNetwork
from attnbench.modules import get_module_entry
from attnbench.modules.lsk import LSK
from attnbench.modules.slots import SlotPlan


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomise(module: nn.Module) -> None:
    """Random weights and biases, so every term of the reference matters."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def reference(lsk: LSK, x: torch.Tensor, k1: int, k2: int, d2: int, pools: tuple[str, ...]) -> torch.Tensor:
    """U_1 = dw_{k1}(X), U_2 = dw_{k2, d2}(U_1); U~_i = F1x1_i(U_i); SA from [avg; max] of [U~_1; U~_2]
    over channels -> F^{2->N} (7x7) -> sigmoid; S = F(sum_i SA_i * U~_i); Y = X * S."""
    c = x.shape[1]
    u1 = F.conv2d(x, lsk.conv0.weight, lsk.conv0.bias, padding=k1 // 2, groups=c)
    u2 = F.conv2d(u1, lsk.conv_spatial.weight, lsk.conv_spatial.bias, padding=d2 * (k2 // 2), dilation=d2, groups=c)
    t1 = F.conv2d(u1, lsk.conv1.weight, lsk.conv1.bias)
    t2 = F.conv2d(u2, lsk.conv2.weight, lsk.conv2.bias)
    stacked = torch.cat([t1, t2], dim=1)
    descriptors = {"avg": stacked.sum(dim=1, keepdim=True) / stacked.shape[1], "max": stacked.max(dim=1, keepdim=True).values}
    sa = F.conv2d(torch.cat([descriptors[p] for p in pools], dim=1), lsk.conv_squeeze.weight, lsk.conv_squeeze.bias, padding=3)
    sa = 1 / (1 + torch.exp(-sa))
    s = F.conv2d(sa[:, 0:1] * t1 + sa[:, 1:2] * t2, lsk.conv.weight, lsk.conv.bias)
    return x * s


@pytest.mark.parametrize("channels,k1,k2,d2,pools", [
    (8, 5, 7, 3, ("avg", "max")),
    (7, 3, 5, 2, ("avg", "max")),
    (6, 5, 7, 3, ("max",)),
    (6, 5, 7, 3, ("avg",)),
])
def test_matches_paper_equations(channels, k1, k2, d2, pools):
    lsk = build_module("lsk", channels, kernel_size=k1, dilated_kernel=k2, dilation=d2, pool_types=list(pools)).double()
    _randomise(lsk)
    x = torch.randn(2, channels, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(lsk(x), reference(lsk, x, k1, k2, d2, pools))


# zcablii/LSKNet @ cbe06cab, mmrotate/models/backbones/lsknet.py: LSKblock(dim) built in a scratch
# script (the file loaded with mmcv/timm stubbed), parameters counted. With its state dict loaded
# into this module (same names), outputs on a random float64 input agree to max |diff| 0.0.
@pytest.mark.parametrize("channels,expected", [(64, 11_334), (256, 118_470), (160, 51_078)])
def test_parameter_count_of_the_official_lskblock(channels, expected):
    assert n_params(build_module("lsk", channels)) == expected


def test_lsknet_t_is_van_b0_with_lsk_in_the_mixer():
    # the official LSKNet(embed_dims=[32, 64, 160, 256], depths=[3, 3, 5, 2]) in the same scratch script:
    # 3,990,190 parameters (no head); with its state dict renamed onto this model, the last stage's
    # features on a random 64x64 input agree to 6e-13 (float64, random BN statistics and layer scales)
    plan = SlotPlan("lsk", get_module_entry("lsk").resolve({}), stages=(1, 2, 3, 4), position="mixer")
    model = VisualAttentionNetwork(VAN_CONFIGS["van_b0"], plan, num_classes=1000)
    assert n_params(model) - n_params(model.head) == 3_990_190
    assert all(isinstance(block.mixer.gate, LSK) for stage in (model.stage1, model.stage4) for block in stage.blocks)


def test_default_placement_is_the_mixer_where_a_backbone_has_it():
    entry = get_module_entry("lsk")
    assert default_placement(get_backbone_entry("van_b0"), entry) == ((1, 2, 3, 4), "mixer", None)
    assert default_placement(get_backbone_entry("mscan_t"), entry)[1] == "mixer"
    assert default_placement(get_backbone_entry("resnet50"), entry) == ((2, 3, 4, 5), "standard", None)


def test_paper_defaults_and_official_layout():
    entry = get_module_entry("lsk")
    assert entry.kind == "gate"
    assert entry.schema.defaults() == {"kernel_size": 5, "dilated_kernel": 7, "dilation": 3, "pool_types": ("avg", "max")}
    lsk = build_module("lsk", 64)
    assert (lsk.conv0.kernel_size, lsk.conv0.padding, lsk.conv0.groups) == ((5, 5), (2, 2), 64)
    spatial = lsk.conv_spatial
    assert (spatial.kernel_size, spatial.dilation, spatial.padding, spatial.groups) == ((7, 7), (3, 3), (9, 9), 64)
    assert lsk.conv1.out_channels == lsk.conv2.out_channels == lsk.conv.in_channels == 32
    assert (lsk.conv_squeeze.in_channels, lsk.conv_squeeze.out_channels, lsk.conv_squeeze.padding) == (2, 2, (3, 3))
    assert all(m.bias is not None for m in lsk.modules() if isinstance(m, nn.Conv2d))


def test_first_selection_map_weights_the_first_kernel():
    """The code's sig[:, 0] goes with the 5x5 feature, sig[:, 1] with the dilated one; the product has no sigmoid."""
    lsk = build_module("lsk", 4).double()
    _randomise(lsk)
    with torch.no_grad():
        lsk.conv_squeeze.weight.zero_()
        lsk.conv_squeeze.bias.copy_(torch.tensor([50.0, -50.0]))  # map 0 = 1, map 1 = 0
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(lsk(x), x * lsk.conv(lsk.conv1(lsk.conv0(x))))
        assert (lsk(x) / x).min() < 0  # x times an unsquashed map: it can flip signs


def test_receptive_field_is_k1_plus_d2_times_k2_minus_1():
    """A point impulse spreads over k1 + d2 (k2 - 1) positions per side through the two depthwise convs."""
    for k1, k2, d2, rf in [(5, 7, 3, 23), (3, 5, 2, 11)]:
        lsk = build_module("lsk", 2, kernel_size=k1, dilated_kernel=k2, dilation=d2).double()
        with torch.no_grad():
            lsk.conv0.weight.fill_(1.0)
            lsk.conv0.bias.zero_()
            lsk.conv_spatial.weight.fill_(1.0)
            lsk.conv_spatial.bias.zero_()
            x = torch.zeros(1, 2, 31, 31, dtype=torch.float64)
            x[..., 15, 15] = 1.0
            spread = lsk.conv_spatial(lsk.conv0(x))[0, 0, 15]
        assert int((spread != 0).sum()) == rf


def test_pool_types_set_the_selection_inputs():
    assert build_module("lsk", 8, pool_types=["max"]).conv_squeeze.in_channels == 1
    assert n_params(build_module("lsk", 64)) - n_params(build_module("lsk", 64, pool_types="avg")) == 2 * 49
    assert build_module("lsk", 8, pool_types=["max", "avg"]).pool_types == ("avg", "max")  # official order


@pytest.mark.parametrize("channels,hp,key", [
    (1, {}, "channels"),
    (8, {"kernel_size": 4}, "kernel_size"),
    (8, {"dilated_kernel": 6}, "dilated_kernel"),
    (8, {"dilation": 0}, "dilation"),
    (8, {"pool_types": ["median"]}, "pool_types"),
    (8, {"reduction": 2}, "reduction"),
])
def test_bad_values_name_their_key(channels, hp, key):
    with pytest.raises(ConfigError) as info:
        build_module("lsk", channels, **hp)
    assert info.value.key == key
