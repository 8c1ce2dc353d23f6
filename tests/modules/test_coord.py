"""Coordinate Attention against the paper's equations, the official code's parameter counts, its
h_swish, and the direction ablation."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry
from attnbench.modules.coord import h_swish


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: nn.Module) -> None:
    """Random weights and BN running statistics, so every layer takes part."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        module.bn1.running_mean.copy_(torch.randn_like(module.bn1.running_mean))
        module.bn1.running_var.copy_(torch.rand_like(module.bn1.running_var) + 0.5)


def conv1x1(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias)


def reference(ca: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eq. (4)-(9): z^h = mean over W, z^w = mean over H; f = h_swish(BN(F1([z^h, z^w]))); y = x g^h g^w."""
    z_h, z_w = x.mean(dim=3), x.mean(dim=2)  # (N, C, H), (N, C, W)
    bn = ca.bn1
    f = conv1x1(torch.cat([z_h, z_w], dim=2)[..., None], ca.conv1)
    f = F.batch_norm(f, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    f = f * torch.clamp(f + 3, 0, 6) / 6
    f_h, f_w = f[:, :, : x.shape[2]], f[:, :, x.shape[2]:]
    g_h = torch.sigmoid(conv1x1(f_h, ca.conv_h))  # (N, C, H, 1)
    g_w = torch.sigmoid(conv1x1(f_w, ca.conv_w))  # (N, C, W, 1)
    return x * g_h * g_w.transpose(2, 3)


@pytest.mark.parametrize("channels,reduction", [(32, 32), (64, 4)])
def test_matches_paper_equations(channels: int, reduction: int) -> None:
    torch.manual_seed(0)
    ca = build_module("coord", channels, reduction=reduction).double().eval()
    randomise(ca)
    x = torch.randn(2, channels, 6, 9, dtype=torch.float64)
    torch.testing.assert_close(ca(x), reference(ca, x))


@pytest.mark.parametrize("channels,expected", [(64, 1688), (256, 6680)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # Andrew-Qibin/CoordAttention dbd5e7b, coordatt.py: sum(p.numel()) of CoordAtt(channels, channels),
    # reduction 32; outputs matched this module exactly (max |diff| 0.0, float32) after loading its state dict.
    assert n_params(build_module("coord", channels)) == expected


def test_hidden_width_is_at_least_8() -> None:
    assert build_module("coord", 64).conv1.out_channels == 8  # 64 // 32 = 2, floored at 8
    assert build_module("coord", 512).conv1.out_channels == 16
    assert build_module("coord", 512, reduction=8).conv1.out_channels == 64


def test_h_swish_is_the_official_formula_not_a_sigmoid() -> None:
    """The official h_swish is x * relu6(x + 3) / 6 (MobileNetV3), not x * sigmoid(x)."""
    ca = build_module("coord", 16).eval()
    with torch.no_grad():
        ca.conv1.weight.zero_()
        ca.conv1.bias.fill_(-1.0)  # every hidden value is -1 (BN at init is the identity in eval)
    hidden = h_swish(ca.bn1(ca.conv1(torch.randn(1, 16, 9, 1))))
    torch.testing.assert_close(hidden, torch.full_like(hidden, -1 / 3), atol=1e-5, rtol=0)  # sigmoid: -0.269


@pytest.mark.parametrize("direction", ["h", "w"])
def test_single_direction_ablation(direction: str) -> None:
    torch.manual_seed(0)
    both = build_module("coord", 32).eval()
    randomise(both)
    one = build_module("coord", 32, directions=[direction]).eval()
    keep = "conv_h" if direction == "h" else "conv_w"
    shared = {k: v for k, v in both.state_dict().items() if not k.startswith(("conv_h", "conv_w")) or k.startswith(keep)}
    one.load_state_dict(shared)
    x = torch.randn(2, 32, 5, 7)
    z = x.mean(dim=3, keepdim=True) if direction == "h" else x.mean(dim=2, keepdim=True).transpose(2, 3)
    gate = getattr(both, keep)(h_swish(both.bn1(both.conv1(z)))).sigmoid()
    torch.testing.assert_close(one(x), x * (gate if direction == "h" else gate.transpose(2, 3)))
    assert n_params(one) == n_params(both) - (8 * 32 + 32)


def test_paper_defaults() -> None:
    assert get_module_entry("coord").schema.defaults() == {"reduction": 32, "directions": ("h", "w")}


@pytest.mark.parametrize("hp,key", [
    ({"reduction": 0}, "reduction"), ({"directions": []}, "directions"), ({"directions": ["c"]}, "directions"),
])
def test_bad_values_name_their_key(hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("coord", 32, **hp)
    assert info.value.key == key
