"""Double attention against the paper's equations written per descriptor and per position."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def maps(a2: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(F.conv2d(x, c.weight, c.bias).flatten(2) for c in (a2.conv_a, a2.conv_b, a2.conv_v))


def reference(a2: nn.Module, x: torch.Tensor, distribute_over_positions: bool = False) -> torch.Tensor:
    """g_j = sum_p A[:, p] softmax_p(B_j)[p] (eq. 4); z_p = sum_j softmax_j(V[:, p])[j] g_j (eq. 5); X + conv(Z)."""
    a, b, v = maps(a2, x)
    descriptors = [torch.einsum("ncp,np->nc", a, torch.softmax(b[:, j], dim=1)) for j in range(b.shape[1])]
    weights = torch.softmax(v, dim=2 if distribute_over_positions else 1)
    z = torch.zeros_like(a)
    for p in range(a.shape[2]):
        for j, g in enumerate(descriptors):
            z[:, :, p] += weights[:, j, p, None] * g
    expand = a2.expand
    return x + F.conv2d(z.reshape(x.shape[0], -1, *x.shape[2:]), expand.weight, expand.bias)


@pytest.mark.parametrize("hp", [{}, {"reduction_m": 2, "reduction_n": 8}])
def test_matches_paper_equations(hp: dict) -> None:
    torch.manual_seed(0)
    a2 = build_module("a2", 16, **hp).double()
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(a2(x), reference(a2, x))


def test_distribution_softmax_runs_over_descriptors_not_positions() -> None:
    """Eq. 5 normalises v_i over the c_n descriptors; common re-implementations normalise over positions."""
    torch.manual_seed(1)
    a2 = build_module("a2", 16).double()
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64)
    assert not torch.allclose(a2(x), reference(a2, x, distribute_over_positions=True))


@pytest.mark.parametrize("channels,expected", [(64, 4208), (256, 65984)])
def test_parameter_count_of_the_papers_structure(channels: int, expected: int) -> None:
    # No official code exists. Figure 2: three 1x1 convs C -> C/4 with biases (64: 3 x 1040; 256: 3 x 16448)
    # and the 1x1 expansion C/4 -> C with bias (64: 1088; 256: 16640), counted by hand.
    assert n_params(build_module("a2", channels)) == expected


def test_widths_follow_the_reductions() -> None:
    a2 = build_module("a2", 64, reduction_m=2, reduction_n=8)
    assert (a2.conv_a.out_channels, a2.conv_b.out_channels, a2.conv_v.out_channels) == (32, 8, 8)
    assert a2.expand.in_channels == 32 and a2.expand.out_channels == 64
    default = build_module("a2", 64)
    assert (default.conv_a.out_channels, default.conv_b.out_channels) == (16, 16)


@pytest.mark.parametrize("hp,key", [({"reduction_m": 32}, "reduction_m"), ({"reduction_n": 0}, "reduction_n")])
def test_bad_values_name_their_key(hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("a2", 16, **hp)
    assert info.value.key == key
