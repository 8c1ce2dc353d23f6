"""Criss-cross attention against the paper's per-position equations, the official parameter counts, and R."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomised(channels: int, **hp: int) -> nn.Module:
    module = build_module("cc", channels, **hp).double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 2 / channels ** 0.5)
    return module


def reference_step(cc: nn.Module, x: torch.Tensor, self_once: bool = True) -> torch.Tensor:
    """H'_u = gamma * sum_{i in Omega_u} softmax_i(Q_u . K_i) V_i + H_u, Omega_u = the H + W - 1 positions
    of u's row and column (eqs. 1-2); `self_once=False` counts u twice, which the official INF mask prevents."""
    q, k, v = (F.conv2d(x, c.weight, c.bias) for c in (cc.query_conv, cc.key_conv, cc.value_conv))
    out = x.clone()
    _, _, h, w = x.shape
    for i in range(h):
        for j in range(w):
            column = [(r, j) for r in range(h) if r != i or not self_once]
            positions = column + [(i, s) for s in range(w)]
            keys = torch.stack([k[:, :, r, s] for r, s in positions], dim=2)
            values = torch.stack([v[:, :, r, s] for r, s in positions], dim=2)
            weights = torch.softmax(torch.einsum("nc,ncp->np", q[:, :, i, j], keys), dim=1)
            out[:, :, i, j] += cc.gamma * torch.einsum("np,ncp->nc", weights, values)
    return out


@pytest.mark.parametrize("recurrence", [1, 2])
def test_matches_paper_equations(recurrence: int) -> None:
    torch.manual_seed(0)
    cc = randomised(16, recurrence=recurrence)
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    expected = x
    for _ in range(recurrence):  # shared weights: the same step R times (official RCCAModule.forward)
        expected = reference_step(cc, expected)
    torch.testing.assert_close(cc(x), expected)


def test_centre_position_counted_once_by_the_official_inf_mask() -> None:
    torch.manual_seed(1)
    cc = randomised(16, recurrence=1)
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64)
    assert not torch.allclose(cc(x), reference_step(cc, x, self_once=False))


def test_gamma_starts_at_zero_and_scales_the_papers_aggregation() -> None:
    """The paper adds the aggregate to H directly; the official code scales it by gamma, initialised to 0."""
    torch.manual_seed(2)
    x = torch.randn(2, 16, 5, 3)
    fresh = build_module("cc", 16)
    assert fresh.gamma.item() == 0 and torch.equal(fresh(x), x)
    cc = randomised(16, recurrence=1)
    with torch.no_grad():
        cc.gamma.fill_(1.0)
    x = x.double()
    paper = reference_step(cc, x)  # gamma = 1: eq. (2) as printed
    with torch.no_grad():
        cc.gamma.fill_(0.25)
    torch.testing.assert_close(cc(x), x + 0.25 * (paper - x))


@pytest.mark.parametrize("channels,expected", [(64, 5201), (256, 82241)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # speedinghzl/CCNet 1fae6c6, cc_attention/functions.py CrissCrossAttention(C) (INF's .cuda() dropped):
    # sum(p.numel()); applied twice it matched this module (R = 2) to 1e-14 after copying the state dict.
    assert n_params(build_module("cc", channels)) == expected


def test_recurrence_shares_weights_and_defaults() -> None:
    torch.manual_seed(3)
    cc = randomised(16)
    assert cc.recurrence == 2 and cc.query_conv.out_channels == 2 and cc.value_conv.out_channels == 16
    x = torch.randn(1, 16, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(cc(x), cc.step(cc.step(x)))
    assert n_params(build_module("cc", 16, recurrence=3)) == n_params(build_module("cc", 16, recurrence=1))
    assert build_module("cc", 16, reduction=4).key_conv.out_channels == 4


@pytest.mark.parametrize("hp,key", [({"recurrence": 0}, "recurrence"), ({"reduction": 32}, "reduction")])
def test_bad_values_name_their_key(hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("cc", 16, **hp)
    assert info.value.key == key
