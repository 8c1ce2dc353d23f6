"""BAM against a functional rebuild, the official code's parameter counts, and its switches."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(module: nn.Module) -> None:
    """Random weights and BN running statistics, so every layer takes part."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.3)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)


def bn(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def reference(bam: nn.Module, x: torch.Tensor, combine: str, dilation: int = 4) -> torch.Tensor:
    """F' = F + F * sigmoid(combine(Mc, Ms)), the layers as the official code orders them."""
    fc0, bn0, _, fc1 = bam.channel_gate.mlp
    hidden = torch.relu(bn(F.linear(x.mean(dim=(2, 3)), fc0.weight, fc0.bias), bn0))
    mc = F.linear(hidden, fc1.weight, fc1.bias)[:, :, None, None]
    layers = list(bam.spatial_gate.body)
    s = torch.relu(bn(F.conv2d(x, layers[0].weight, layers[0].bias), layers[1]))
    for conv, norm in zip(layers[3:-1:3], layers[4:-1:3]):
        s = torch.relu(bn(F.conv2d(s, conv.weight, conv.bias, padding=dilation, dilation=dilation), norm))
    ms = F.conv2d(s, layers[-1].weight, layers[-1].bias)
    logits = {"product": mc * ms, "sum": mc + ms, "max": torch.maximum(mc, ms)}[combine]
    return x + x * torch.sigmoid(logits)


@pytest.mark.parametrize("combine", ["product", "sum", "max"])
def test_matches_functional_reference(combine: str) -> None:
    torch.manual_seed(0)
    bam = build_module("bam", 32, reduction=4, combine=combine).eval()
    randomise(bam)
    x = torch.randn(2, 32, 9, 9)
    torch.testing.assert_close(bam(x), reference(bam, x, combine))


def test_official_combination_is_the_product_not_eq2_sum() -> None:
    """The paper's eq. (2) sums Mc and Ms; the official BAM.forward multiplies them; the code wins."""
    torch.manual_seed(1)
    bam = build_module("bam", 32, reduction=4).eval()
    assert bam.combine == "product"
    randomise(bam)
    x = torch.randn(1, 32, 6, 6)
    mc, ms = bam.channel_gate(x), bam.spatial_gate(x)
    torch.testing.assert_close(bam(x), x * (1 + torch.sigmoid(mc * ms)))
    assert not torch.allclose(bam(x), x * (1 + torch.sigmoid(mc + ms)))


def test_batch_norms_sit_after_hidden_layers_not_on_branch_outputs() -> None:
    """The paper puts a BN on each branch's output; the official code has them on the hidden layers only."""
    bam = build_module("bam", 64)
    assert isinstance(bam.channel_gate.mlp[-1], nn.Linear) and isinstance(bam.spatial_gate.body[-1], nn.Conv2d)
    norms = [m.num_features for m in bam.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms == [4, 4, 4, 4]


@pytest.mark.parametrize("channels,expected", [(64, 1173), (256, 17361)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # Jongchan/attention-module 459efad, MODELS/bam.py: sum(p.numel()) of BAM(channels) (its undefined
    # `gate_activation` line stubbed out); outputs matched this module to 1e-15 after copying weights.
    assert n_params(build_module("bam", channels)) == expected


def test_init_is_what_the_official_resnet_leaves() -> None:
    bam = build_module("bam", 64)
    for m in bam.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.all(m.bias == 0)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    reduce = bam.spatial_gate.body[0].weight  # Kaiming normal, fan out: std sqrt(2 / (4 * 1 * 1))
    assert 0.5 < reduce.std().item() / (2 / 4) ** 0.5 < 1.5


def test_defaults_are_the_papers() -> None:
    bam = build_module("bam", 64)
    dilated = [m for m in bam.spatial_gate.body if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [(m.dilation, m.padding) for m in dilated] == [((4, 4), (4, 4))] * 2
    assert bam.channel_gate.mlp[0].out_features == 64 // 16


def test_dilation_and_conv_count() -> None:
    torch.manual_seed(2)
    bam = build_module("bam", 16, reduction=2, dilation=2, dilated_convs=3).eval()
    randomise(bam)
    dilated = [m for m in bam.spatial_gate.body if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(dilated) == 3 and all(m.dilation == (2, 2) for m in dilated)
    x = torch.randn(1, 16, 7, 7)
    torch.testing.assert_close(bam(x), reference(bam, x, "product", dilation=2))


def test_single_branch_ablations() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 16, 5, 5)
    channel = build_module("bam", 16, reduction=4, branches=["channel"]).eval()
    assert channel.spatial_gate is None
    torch.testing.assert_close(channel(x), x * (1 + torch.sigmoid(channel.channel_gate(x))))
    spatial = build_module("bam", 16, reduction=4, branches="spatial").eval()
    assert spatial.channel_gate is None
    torch.testing.assert_close(spatial(x), x * (1 + torch.sigmoid(spatial.spatial_gate(x))))


@pytest.mark.parametrize("hp,key", [
    ({"reduction": 32}, "reduction"),
    ({"dilation": 0}, "dilation"),
    ({"dilated_convs": -1}, "dilated_convs"),
    ({"combine": "mean"}, "combine"),
    ({"branches": []}, "branches"),
])
def test_bad_values_name_their_key(hp: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("bam", 16, **hp)
    assert info.value.key == key
