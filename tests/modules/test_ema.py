"""EMA against the paper's branches written out group by group, the official EMA class's parameter
counts, its per-channel GroupNorm, the weights shared by all groups, and the group check."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomise(module: nn.Module) -> None:
    """Random weights, biases and GroupNorm affine parameters, so every term of the reference matters."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _softmax(v: torch.Tensor) -> torch.Tensor:
    e = torch.exp(v - v.max())
    return e / e.sum()


def reference(ema: nn.Module, x: torch.Tensor, groups: int, norm_groups: int | None = None) -> torch.Tensor:
    """Per sample and group X_g (C/G, H, W): 1x1 branch sigma(z_h) * sigma(z_w) * X_g from the shared 1x1 conv
    of the H- and W-pooled descriptors, then GroupNorm (C/G groups: per channel, unless `norm_groups`);
    3x3 branch conv3x3(X_g); weights = softmax(GAP(x1)) . x2 + softmax(GAP(x2)) . x1; out = X_g * sigma(weights)."""
    n, c, h, w = x.shape
    width = c // groups
    norm_groups = width if norm_groups is None else norm_groups
    w1, b1 = ema.conv1x1.weight.flatten(1), ema.conv1x1.bias
    gamma, beta, eps = ema.norm.weight, ema.norm.bias, ema.norm.eps
    out = torch.empty_like(x)
    for i in range(n):
        for g in range(groups):
            xg = x[i, g * width:(g + 1) * width]  # (C/G, H, W)
            z_h = w1 @ xg.mean(dim=2) + b1[:, None]  # (C/G, H): the conv on the W-pooled column
            z_w = w1 @ xg.mean(dim=1) + b1[:, None]  # (C/G, W)
            gated = xg * torch.sigmoid(z_h)[:, :, None] * torch.sigmoid(z_w)[:, None, :]
            parts = gated.reshape(norm_groups, -1)
            mu = parts.mean(dim=1, keepdim=True)
            var = ((parts - mu) ** 2).mean(dim=1, keepdim=True)
            x1 = ((parts - mu) / torch.sqrt(var + eps)).reshape(width, h, w) * gamma[:, None, None] + beta[:, None, None]
            x2 = F.conv2d(xg[None], ema.conv3x3.weight, ema.conv3x3.bias, padding=1)[0]
            a1, a2 = _softmax(x1.mean(dim=(1, 2))), _softmax(x2.mean(dim=(1, 2)))
            weights = (a1[:, None, None] * x2).sum(dim=0) + (a2[:, None, None] * x1).sum(dim=0)
            out[i, g * width:(g + 1) * width] = xg * torch.sigmoid(weights)
    return out


@pytest.mark.parametrize("channels,groups", [(16, 4), (12, 2), (8, 8)])
def test_matches_paper_equations(channels, groups):
    ema = build_module("ema", channels, groups=groups).double()
    _randomise(ema)
    x = torch.randn(2, channels, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(ema(x), reference(ema, x, groups))


# YOLOonMe/EMA-attention-module @ afc37ecf, file EMA_attention_module: EMA(channels) (factor 32)
# built in a scratch script and its parameters counted; EMA(64, factor=8) gives 672. With its state
# dict loaded into this module (gn.* -> norm.*), outputs on random float64 inputs agree to max |diff|
# 8.9e-16 (channels 64 and 256 at factor 32, 64 at factor 8, 48 at factor 4).
@pytest.mark.parametrize("channels,groups,expected", [(64, 32, 48), (256, 32, 672), (2048, 32, 41_216), (64, 8, 672)])
def test_parameter_count_of_the_official_ema(channels, groups, expected):
    assert n_params(build_module("ema", channels, groups=groups)) == expected


def test_paper_defaults_and_official_layout():
    entry = get_module_entry("ema")
    assert entry.kind == "gate" and entry.schema.defaults() == {"groups": 32}
    ema = build_module("ema", 256)
    assert (ema.conv1x1.in_channels, ema.conv1x1.out_channels, ema.conv1x1.kernel_size) == (8, 8, (1, 1))
    assert (ema.conv3x3.in_channels, ema.conv3x3.kernel_size, ema.conv3x3.padding) == (8, (3, 3), (1, 1))
    assert ema.conv1x1.bias is not None and ema.conv3x3.bias is not None


def test_group_norm_is_per_channel_as_the_official_code():
    """nn.GroupNorm(C/G, C/G): one channel per norm group; a single-group norm would give other outputs."""
    ema = build_module("ema", 16, groups=4).double()
    assert (ema.norm.num_groups, ema.norm.num_channels, ema.norm.eps) == (4, 4, 1e-5)
    _randomise(ema)
    x = torch.randn(1, 16, 4, 5, dtype=torch.float64)
    assert not torch.allclose(ema(x), reference(ema, x, 4, norm_groups=1))


def test_all_groups_share_the_weights():
    """Groups are folded into the batch: swapping two groups of the input swaps them in the output."""
    ema = build_module("ema", 12, groups=3).double()
    _randomise(ema)
    x = torch.randn(2, 12, 4, 4, dtype=torch.float64)
    order = torch.cat([torch.arange(8, 12), torch.arange(4, 8), torch.arange(0, 4)])
    torch.testing.assert_close(ema(x[:, order]), ema(x)[:, order])


def test_same_output_in_train_and_eval():
    """GroupNorm keeps no running statistics, so the gate is the same in both modes."""
    ema = build_module("ema", 16, groups=4).double()
    _randomise(ema)
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(ema.train()(x), ema.eval()(x))


def test_groups_change_the_forward():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 4, 4)
    assert not torch.allclose(build_module("ema", 16, groups=4)(x), build_module("ema", 16, groups=8)(x))


@pytest.mark.parametrize("channels,hp", [(48, {"groups": 32}), (16, {}), (64, {"groups": 0}), (64, {"factor": 8})])
def test_bad_groups_are_refused_naming_the_key(channels, hp):
    with pytest.raises(ConfigError) as info:
        build_module("ema", channels, **hp)
    assert info.value.key == next(iter(hp), "groups")
