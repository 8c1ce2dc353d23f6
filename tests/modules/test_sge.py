"""Spatial Group-wise Enhance against the paper's equations, the official code's parameter counts,
its unbiased std and eps placement, its initialisation (also inside a backbone), and its checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench import ConfigError, build_model, build_module
from attnbench.modules import get_module_entry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reference(sge: nn.Module, x: torch.Tensor, groups: int, unbiased: bool = True) -> torch.Tensor:
    """Eq. (1)-(4) per group: g = mean_i x_i, c_i = g . x_i, normalise c over positions, a_i = sigmoid(gamma c + beta)."""
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    size = c // groups
    for k in range(groups):
        part = x[:, k * size:(k + 1) * size].flatten(2)  # (N, C/G, m) with m = H*W
        g = part.mean(dim=2, keepdim=True)
        coeff = (part * g).sum(dim=1)  # (N, m)
        centred = coeff - coeff.mean(dim=1, keepdim=True)
        m = coeff.shape[1]
        std = (centred.pow(2).sum(dim=1, keepdim=True) / (m - 1 if unbiased else m)).sqrt()
        normed = centred / (std + 1e-5)
        gate = torch.sigmoid(sge.gamma[0, k, 0, 0] * normed + sge.beta[0, k, 0, 0])
        out[:, k * size:(k + 1) * size] = (part * gate[:, None, :]).view(n, size, h, w)
    return out


@pytest.mark.parametrize("channels,groups", [(32, 8), (16, 16)])
def test_matches_paper_equations(channels: int, groups: int) -> None:
    torch.manual_seed(0)
    sge = build_module("sge", channels, groups=groups).double()
    with torch.no_grad():
        sge.gamma.copy_(torch.randn_like(sge.gamma))
        sge.beta.copy_(torch.randn_like(sge.beta))
    x = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(sge(x), reference(sge, x, groups))


def test_unbiased_std_plus_eps_as_the_official_code() -> None:
    """The code divides by torch's unbiased std (H*W - 1) plus 1e-5; a biased std gives other gates."""
    torch.manual_seed(1)
    sge = build_module("sge", 8, groups=2).double()
    with torch.no_grad():
        sge.gamma.fill_(2.0)
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(sge(x), reference(sge, x, 2, unbiased=True))
    assert not torch.allclose(sge(x), reference(sge, x, 2, unbiased=False))


def test_official_init_gamma_zero_beta_one() -> None:
    sge = build_module("sge", 128)
    assert torch.all(sge.gamma == 0) and torch.all(sge.beta == 1) and sge.gamma.shape == (1, 64, 1, 1)
    x = torch.randn(2, 128, 4, 4)
    torch.testing.assert_close(sge(x), x * torch.sigmoid(torch.tensor(1.0)))


def test_backbone_keeps_the_official_init() -> None:
    """The ResNets re-initialise a slot's own 4-D `weight`; gamma / beta must survive."""
    model = build_model("cifar_resnet20", "sge", groups=16)
    gates = [m for m in model.modules() if type(m).__name__ == "SpatialGroupEnhance"]
    assert len(gates) == 9 and all(torch.all(g.gamma == 0) and torch.all(g.beta == 1) for g in gates)


@pytest.mark.parametrize("channels,expected", [(64, 128), (256, 128)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # implus/PytorchInsight 2864528, classification/models/imagenet/resnet_sge.py: sum(p.numel()) of
    # SpatialGroupEnhance(64) (the ResNets' groups), run on (2, channels, 7, 9) maps; outputs matched this
    # module exactly (max |diff| 0.0) after copying weight -> gamma, bias -> beta. 2 per group, whatever C.
    assert n_params(build_module("sge", channels)) == expected
    assert n_params(build_module("sge", channels, groups=8)) == 16


def test_groups_change_the_forward() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 32, 4, 4)
    a, b = build_module("sge", 32, groups=4), build_module("sge", 32, groups=8)
    with torch.no_grad():
        a.gamma.fill_(1.0)
        b.gamma.fill_(1.0)
    assert not torch.allclose(a(x), b(x))


def test_one_position_maps_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        build_module("sge", 8, groups=2)(torch.randn(1, 8, 1, 1))
    assert info.value.key == "input_size"


def test_paper_defaults() -> None:
    assert get_module_entry("sge").schema.defaults() == {"groups": 64}


@pytest.mark.parametrize("channels,hp,key", [(32, {}, "groups"), (48, {"groups": 32}, "groups"), (32, {"groups": 0}, "groups")])
def test_bad_values_name_their_key(channels: int, hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("sge", channels, **hp)
    assert info.value.key == key
