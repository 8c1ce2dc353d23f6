"""Shuffle Attention against the paper's equations, the official code's parameter counts, its
initialisation, the final 2-group channel shuffle, and its checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry
from attnbench.modules.shuffle import channel_shuffle


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reference(sa: nn.Module, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Per group k: X'_k1 = sigmoid(W1 GAP(X_k1) + b1) X_k1, X'_k2 = sigmoid(W2 GN(X_k2) + b2) X_k2;
    concatenate; then channel j of the output is channel (j % 2) * C/2 + j // 2 (2-group shuffle)."""
    n, c, h, w = x.shape
    size, half = c // groups, c // (2 * groups)
    w1, b1, w2, b2 = (p.view(-1, 1, 1) for p in (sa.cweight, sa.cbias, sa.sweight, sa.sbias))
    gn_w, gn_b = sa.gn.weight.view(-1, 1, 1), sa.gn.bias.view(-1, 1, 1)
    out = torch.empty_like(x)
    for k in range(groups):
        first = x[:, k * size:k * size + half]
        second = x[:, k * size + half:(k + 1) * size]
        s = first.mean(dim=(2, 3), keepdim=True)
        out[:, k * size:k * size + half] = first * torch.sigmoid(w1 * s + b1)
        mu = second.mean(dim=(2, 3), keepdim=True)
        var = second.var(dim=(2, 3), unbiased=False, keepdim=True)
        gn = (second - mu) / torch.sqrt(var + sa.gn.eps) * gn_w + gn_b
        out[:, k * size + half:(k + 1) * size] = second * torch.sigmoid(w2 * gn + b2)
    order = [(j % 2) * (c // 2) + j // 2 for j in range(c)]
    return out[:, order]


@pytest.mark.parametrize("channels,groups", [(32, 4), (48, 8)])
def test_matches_paper_equations(channels: int, groups: int) -> None:
    torch.manual_seed(0)
    sa = build_module("shuffle", channels, groups=groups).double()
    with torch.no_grad():
        for p in sa.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(sa(x), reference(sa, x, groups))


def test_official_init_and_groupnorm() -> None:
    sa = build_module("shuffle", 256)
    half = 256 // 128
    assert all(p.shape == (1, half, 1, 1) for p in (sa.cweight, sa.cbias, sa.sweight, sa.sbias))
    assert torch.all(sa.cweight == 0) and torch.all(sa.sweight == 0) and torch.all(sa.cbias == 1) and torch.all(sa.sbias == 1)
    assert (sa.gn.num_groups, sa.gn.num_channels, sa.gn.eps, sa.gn.affine) == (half, half, 1e-5, True)
    x = torch.randn(2, 256, 4, 4)
    shuffled = x.view(2, 2, 128, 4, 4).transpose(1, 2).reshape(2, 256, 4, 4)
    torch.testing.assert_close(sa(x), shuffled * torch.sigmoid(torch.tensor(1.0)))


def test_channel_shuffle_interleaves_the_two_halves() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


@pytest.mark.parametrize("channels,expected", [(256, 12), (512, 24)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # wofmanaf/SA-Net 00a6760, models/sa_resnet.py: sum(p.numel()) of sa_layer(channels) (groups 64),
    # 3C/G; outputs matched this module exactly (max |diff| 0.0) after loading its state dict
    # (also sa_layer(64, groups=8): 24). 64 channels cannot take 64 groups (2G must divide C).
    assert n_params(build_module("shuffle", channels)) == expected
    assert n_params(build_module("shuffle", 64, groups=8)) == 24


def test_groups_change_the_forward() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 32, 4, 4)
    a, b = build_module("shuffle", 32, groups=2), build_module("shuffle", 32, groups=4)
    with torch.no_grad():
        for module in (a, b):
            module.cweight.fill_(1.0)
            module.sweight.fill_(1.0)
    assert not torch.allclose(a(x), b(x))


def test_paper_defaults() -> None:
    assert get_module_entry("shuffle").schema.defaults() == {"groups": 64}


@pytest.mark.parametrize("channels,hp,key", [(64, {}, "groups"), (96, {"groups": 32}, "groups"), (32, {"groups": 0}, "groups")])
def test_bad_values_name_their_key(channels: int, hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("shuffle", channels, **hp)
    assert info.value.key == key
