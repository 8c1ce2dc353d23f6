"""SRM against a functional rebuild, the official code's parameter counts, its std and its style subsets."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(srm: nn.Module) -> None:
    with torch.no_grad():
        srm.cfc.normal_()
        srm.bn.weight.normal_(1.0, 0.5)
        srm.bn.bias.normal_(0.0, 0.3)
        srm.bn.running_mean.normal_(0.0, 0.3)
        srm.bn.running_var.uniform_(0.5, 1.5)


def bn(z: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
    return (z - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias


def styles(x: torch.Tensor, denominator: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per channel; std = sqrt(sum (x - mean)^2 / denominator + 1e-5)."""
    mean = x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])
    return mean, torch.sqrt(((x - mean[:, :, None, None]) ** 2).sum(dim=(2, 3)) / denominator + 1e-5)


def test_matches_functional_reference() -> None:
    torch.manual_seed(0)
    srm = build_module("srm", 16).double().eval()
    randomise(srm)
    x = torch.randn(3, 16, 5, 7, dtype=torch.float64) * 2 + 0.5
    mean, std = styles(x, 5 * 7 - 1)
    z = srm.cfc[:, 0] * mean + srm.cfc[:, 1] * std  # CFC: one weight per channel and style
    torch.testing.assert_close(srm(x), x * torch.sigmoid(bn(z, srm.bn))[:, :, None, None])


def test_std_is_the_unbiased_one_of_the_official_code_not_the_papers_population_std() -> None:
    torch.manual_seed(1)
    srm = build_module("srm", 8, styles=["std"]).double().eval()
    randomise(srm)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    gate = srm(x) / x
    unbiased = torch.sigmoid(bn(srm.cfc[:, 0] * styles(x, 9 - 1)[1], srm.bn))[:, :, None, None]
    population = torch.sigmoid(bn(srm.cfc[:, 0] * styles(x, 9)[1], srm.bn))[:, :, None, None]
    torch.testing.assert_close(gate, unbiased.expand_as(gate))
    assert not torch.allclose(gate, population.expand_as(gate))
    with pytest.warns(UserWarning, match="degrees of freedom"):  # HW - 1 = 0: NaN, as in the official layer
        assert torch.isnan(srm(torch.randn(2, 8, 1, 1, dtype=torch.float64))).all()


def test_style_subsets_change_the_pooling() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 8, 4, 4)
    mean_only = build_module("srm", 8, styles="mean").eval()
    randomise(mean_only)
    assert mean_only.cfc.shape == (8, 1)
    z = mean_only.cfc[:, 0] * x.mean(dim=(2, 3))
    torch.testing.assert_close(mean_only(x), x * torch.sigmoid(bn(z, mean_only.bn))[:, :, None, None])
    assert build_module("srm", 8, styles=["std", "mean"]).styles == ("mean", "std")


def test_official_init_starts_every_gate_at_sigmoid_of_bn_of_zero() -> None:
    srm = build_module("srm", 32)
    assert torch.all(srm.cfc == 0)
    x = torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(srm.eval()(x), x / 2)


@pytest.mark.parametrize("channels,expected", [(64, 256), (256, 1024)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # hyunjaelee410/style-based-recalibration-module f6221c7, models/recalibration_modules.py:
    # sum(p.numel()) of SRMLayer(channels); outputs (eval and train mode) and BN running statistics
    # matched this module exactly (max |diff| 0.0, float64) after loading its state dict.
    assert n_params(build_module("srm", channels)) == expected


def test_defaults_and_bad_values() -> None:
    assert get_module_entry("srm").schema.defaults() == {"styles": ("mean", "std")}
    for value in ([], ["max"], ["mean", "mean"]):
        with pytest.raises(ConfigError) as info:
            build_module("srm", 8, styles=value)
        assert info.value.key == "styles"
