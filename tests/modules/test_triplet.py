"""Triplet Attention against the paper's three rotated branches, the official code's parameter
counts, its Z-pool order, BN settings and initialisation, and the no_spatial switch."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: nn.Module) -> None:
    """Random weights and BN running statistics, so every layer takes part."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean))
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)


def branch(gate: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(BN(conv([max, mean] over dim 1))), BN with its running statistics."""
    pooled = torch.stack([x.amax(dim=1), x.mean(dim=1)], dim=1)
    k = gate.conv.weight.shape[-1]
    bn = gate.bn
    logits = F.conv2d(pooled, gate.conv.weight, padding=k // 2)
    logits = F.batch_norm(logits, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return x * torch.sigmoid(logits)


def reference(ta: nn.Module, x: torch.Tensor, spatial: bool = True) -> torch.Tensor:
    """Paper eq.: y = 1/3 (x1 sigma(psi1(Z(x1))) + x2 sigma(psi2(Z(x2))) + x sigma(psi3(Z(x)))), rotated back."""
    # cw: rotate so H is the pooled axis, plane (C, W); hc: W pooled, plane (H, C); hw: C pooled
    cw = branch(ta.cw, x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
    hc = branch(ta.hc, x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
    if not spatial:
        return (cw + hc) / 2
    return (branch(ta.hw, x) + cw + hc) / 3


@pytest.mark.parametrize("no_spatial", [False, True])
def test_matches_paper_branches(no_spatial: bool) -> None:
    torch.manual_seed(0)
    ta = build_module("triplet", 16, no_spatial=no_spatial).double().eval()
    randomise(ta)
    x = torch.randn(2, 16, 6, 9, dtype=torch.float64)
    torch.testing.assert_close(ta(x), reference(ta, x, spatial=not no_spatial))
    assert (ta.hw is None) == no_spatial


def test_each_branch_pools_over_its_own_axis() -> None:
    """cw's conv sees a (C, W) plane, hc's an (H, C) plane: pin the official permutes."""
    ta = build_module("triplet", 5, kernel_size=1).eval()
    with torch.no_grad():
        for gate in (ta.cw, ta.hc, ta.hw):
            gate.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))  # keep only the max
            gate.bn.weight.fill_(1.0)
    x = torch.randn(1, 5, 3, 4)
    eps = ta.cw.bn.eps
    def gate(pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(pooled / (1 + eps) ** 0.5)
    # hw pools over C (dim 1), cw over H (dim 2), hc over W (dim 3)
    expected = sum(x * gate(x.amax(dim=d, keepdim=True)) for d in (1, 2, 3)) / 3
    torch.testing.assert_close(ta(x), expected)


def test_z_pool_is_max_then_mean() -> None:
    ta = build_module("triplet", 8, kernel_size=1).eval()
    with torch.no_grad():
        ta.hw.conv.weight.copy_(torch.tensor([0.0, 1.0]).view(1, 2, 1, 1))  # keep only the second pooled map
        ta.hw.bn.weight.fill_(1.0)
    x = torch.randn(2, 8, 4, 4)
    expected = x * torch.sigmoid(x.mean(dim=1, keepdim=True) / (1 + ta.hw.bn.eps) ** 0.5)
    torch.testing.assert_close(ta.hw(x), expected)


def test_official_bn_settings_and_init() -> None:
    """BasicConv: conv without bias, BN(eps 1e-5, momentum 0.01, affine); the official ResNet init
    zeroes the BN weight under "SpatialGate" (the hw branch) and sets the two others to 1."""
    ta = build_module("triplet", 32)
    for gate in (ta.cw, ta.hc, ta.hw):
        assert gate.conv.bias is None and gate.conv.kernel_size == (7, 7) and gate.conv.padding == (3, 3)
        assert (gate.bn.eps, gate.bn.momentum, gate.bn.affine) == (1e-5, 0.01, True)
    assert ta.hw.bn.weight.item() == 0.0 and ta.cw.bn.weight.item() == 1.0 and ta.hc.bn.weight.item() == 1.0
    ta.eval()
    x = torch.randn(1, 32, 5, 5)
    torch.testing.assert_close(ta.hw(x), x * 0.5)


@pytest.mark.parametrize("channels,expected", [(64, 300), (256, 300)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # landskape-ai/triplet-attention 2cf02fb, MODELS/triplet_attention.py: sum(p.numel()) of
    # TripletAttention(channels, 16); outputs matched exactly (max |diff| 0.0) after mapping its state dict
    # (ChannelGateH -> cw, ChannelGateW -> hc, SpatialGate -> hw); with no_spatial=True: 200.
    assert n_params(build_module("triplet", channels)) == expected
    assert n_params(build_module("triplet", channels, no_spatial=True)) == 200


def test_kernel_size_changes_the_conv() -> None:
    ta = build_module("triplet", 8, kernel_size=3)
    assert ta.cw.conv.kernel_size == (3, 3) and ta.cw.conv.padding == (1, 1)
    x = torch.randn(1, 8, 5, 6)
    assert ta(x).shape == x.shape


def test_paper_defaults() -> None:
    assert get_module_entry("triplet").schema.defaults() == {"kernel_size": 7, "no_spatial": False}


@pytest.mark.parametrize("hp,key", [({"kernel_size": 4}, "kernel_size"), ({"no_spatial": 1}, "no_spatial")])
def test_bad_values_name_their_key(hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("triplet", 32, **hp)
    assert info.value.key == key
