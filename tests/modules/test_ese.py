"""eSE against a functional rebuild, the official code's parameter counts, and its gate switch."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def reference(ese: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CenterMask eq. (1): A = hsigma(W_C(F_gap(X))), X_out = A * X, with hsigma as the official relu6(x + 3) / 6."""
    logits = F.linear(x.mean(dim=(2, 3)), ese.fc.weight.flatten(1), ese.fc.bias)
    return x * (F.relu6(logits + 3.0) / 6.0)[:, :, None, None]


def test_matches_functional_reference() -> None:
    torch.manual_seed(0)
    ese = build_module("ese", 32).double().eval()
    with torch.no_grad():  # large logits, so both flat ends of the hard sigmoid are reached
        ese.fc.weight.normal_(0.0, 2.0)
        ese.fc.bias.normal_()
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64) * 2
    logits = ese.fc(x.mean(dim=(2, 3), keepdim=True))
    assert (logits < -3).any() and (logits > 3).any() and ((logits.abs() < 3).any())
    torch.testing.assert_close(ese(x), reference(ese, x))


def test_hard_sigmoid_is_the_official_relu6_form_bit_for_bit() -> None:
    """The official Hsigmoid is relu6(x + 3) / 6; F.hardsigmoid gives the same bits, forward and backward."""
    x = torch.linspace(-5, 5, 1001, requires_grad=True)
    ours = F.hardsigmoid(x)
    official = F.relu6(x + 3.0) / 6.0
    assert torch.equal(ours, official)
    assert torch.equal(torch.autograd.grad(ours.sum(), x)[0], torch.autograd.grad(official.sum(), x)[0])


def test_one_full_fc_without_reduction() -> None:
    ese = build_module("ese", 48)
    assert ese.fc.weight.shape == (48, 48, 1, 1) and ese.fc.bias is not None
    assert abs(ese.fc.weight.std().item() - math.sqrt(2 / 48)) < 0.02  # VoVNet's kaiming_normal_ (fan in)


@pytest.mark.parametrize("channels,expected", [(64, 4160), (256, 65792)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # youngwanLEE/vovnet-detectron2 b81c813, vovnet/vovnet.py (and youngwanLEE/CenterMask 72147e8,
    # maskrcnn_benchmark/modeling/backbone/vovnet.py): sum(p.numel()) of eSEModule(channels); outputs
    # matched this module exactly (max |diff| 0.0, float64) after copying the fc weights.
    assert n_params(build_module("ese", channels)) == expected


def test_sigmoid_gate_switch() -> None:
    torch.manual_seed(1)
    ese = build_module("ese", 16, gate="sigmoid").eval()
    x = torch.randn(2, 16, 4, 4)
    logits = F.linear(x.mean(dim=(2, 3)), ese.fc.weight.flatten(1), ese.fc.bias)
    torch.testing.assert_close(ese(x), x * torch.sigmoid(logits)[:, :, None, None])


def test_defaults_and_bad_values() -> None:
    assert get_module_entry("ese").schema.defaults() == {"gate": "hard_sigmoid"}
    assert build_module("ese", 8).gate == "hard_sigmoid"
    with pytest.raises(ConfigError) as info:
        build_module("ese", 8, gate="tanh")
    assert info.value.key == "gate"
    with pytest.raises(ConfigError) as info:
        build_module("ese", 8, reduction=4)  # the official constructor's unused argument is not a hyperparameter
    assert info.value.key == "reduction"
