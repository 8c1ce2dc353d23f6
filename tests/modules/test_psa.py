"""PSA against a per-position rebuild of its branches, the official modules' parameter counts and quirks."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomised(channels: int, mode: str) -> nn.Module:
    module = build_module("psa", channels, mode=mode).double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 2 / channels ** 0.5)
    return module


def conv(x: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, layer.weight, layer.bias)


def channel_only(branch: nn.Module, x: torch.Tensor, sequential: bool) -> torch.Tensor:
    """A^ch = sigmoid(W_z(sum_p softmax_p(W_q x)[p] W_v x[:, p])); Z^ch = A^ch * X."""
    v, q = conv(x, branch.conv_v_right).flatten(2), conv(x, branch.conv_q_right).flatten(2)[:, 0]
    weights = torch.softmax(q, dim=1)
    pooled = sum(weights[:, p, None] * v[:, :, p] for p in range(v.shape[2]))[:, :, None, None]
    if sequential:  # PSA_s: conv -> LayerNorm over the C/8 values -> ReLU -> conv, with biases
        first, norm, _, last = branch.conv_up
        hidden = conv(pooled, first)
        hidden = F.layer_norm(hidden, hidden.shape[1:], norm.weight, norm.bias, norm.eps)
        logits = conv(torch.relu(hidden), last)
    else:  # PSA_p: one bias-free conv, no LayerNorm
        logits = conv(pooled, branch.conv_up)
    return x * torch.sigmoid(logits)


def spatial_only(branch: nn.Module, x: torch.Tensor, softmax_on: str) -> torch.Tensor:
    """A^sp[p] = sigmoid(q . v[:, p]), q the spatial mean of W_q x; the softmax where `softmax_on` says:
    "product" (PSA_p: over positions), "values" (PSA_s: each W_v map over positions), "query" (the paper)."""
    q = conv(x, branch.conv_q_left).mean(dim=(2, 3))
    v = conv(x, branch.conv_v_left).flatten(2)
    if softmax_on == "values":
        v = torch.softmax(v, dim=2)
    if softmax_on == "query":
        q = torch.softmax(q, dim=1)
    context = torch.stack([(q * v[:, :, p]).sum(dim=1) for p in range(v.shape[2])], dim=1)
    if softmax_on == "product":
        context = torch.softmax(context, dim=1)
    return x * torch.sigmoid(context).reshape(x.shape[0], 1, *x.shape[2:])


def test_parallel_is_psa_p() -> None:
    torch.manual_seed(0)
    psa = randomised(16, "parallel")
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    expected = channel_only(psa.channel, x, sequential=False) + spatial_only(psa.spatial, x, "product")
    torch.testing.assert_close(psa(x), expected)


def test_sequential_is_psa_s() -> None:
    torch.manual_seed(1)
    psa = randomised(16, "sequential")
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    expected = spatial_only(psa.spatial, channel_only(psa.channel, x, sequential=True), "values")
    torch.testing.assert_close(psa(x), expected)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_spatial_softmax_is_not_the_papers(mode: str) -> None:
    """The paper's spatial-only branch softmaxes the pooled query over channels; neither official module does."""
    torch.manual_seed(2)
    psa = randomised(16, mode)
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64)
    assert not torch.allclose(psa.spatial(x), spatial_only(psa.spatial, x, "query"))


def test_channel_branch_w_z_differs_between_the_official_modules() -> None:
    """The paper's W_z is a conv with a LayerNorm; PSA_p has the conv only, PSA_s a conv-LN-ReLU-conv bottleneck."""
    parallel, sequential = build_module("psa", 64).channel.conv_up, build_module("psa", 64, mode="sequential").channel.conv_up
    assert isinstance(parallel, nn.Conv2d) and parallel.bias is None and (parallel.in_channels, parallel.out_channels) == (32, 64)
    assert [type(m) for m in sequential] == [nn.Conv2d, nn.LayerNorm, nn.ReLU, nn.Conv2d]
    assert (sequential[0].out_channels, sequential[1].normalized_shape) == (8, (8, 1, 1))


@pytest.mark.parametrize("mode,channels,expected", [
    ("parallel", 64, 8256), ("parallel", 256, 131328), ("sequential", 64, 7064), ("sequential", 256, 111200),
])
def test_parameter_counts_of_official_code(mode: str, channels: int, expected: int) -> None:
    # DeLightCMU/PSA 20e307a, semantic-segmentation/network/PSA.py: sum(p.numel()) of PSA_p(C, C) and
    # PSA_s(C, C); outputs matched this module exactly (max |diff| 0, float64) after copying state dicts.
    assert n_params(build_module("psa", channels, mode=mode)) == expected


def test_official_initialisation_and_default() -> None:
    psa = build_module("psa", 64)
    assert psa.mode == "parallel"
    for layer in (psa.channel.conv_v_right, psa.spatial.conv_q_left, psa.spatial.conv_v_left):
        assert layer.bias is None and 0.7 < layer.weight.std().item() / (2 / 64) ** 0.5 < 1.3  # Kaiming, fan in


@pytest.mark.parametrize("channels,hp", [(16, {"mode": "serial"}), (4, {"mode": "sequential"}), (1, {})])
def test_bad_values_name_their_key(channels: int, hp: dict) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("psa", channels, **hp)
    assert info.value.key == "mode"
    build_module("psa", 4)  # parallel only needs C // 2 >= 1
