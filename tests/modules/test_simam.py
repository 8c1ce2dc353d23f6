"""SimAM against the paper's energy (eq. 5), the official code's H*W - 1 denominator, and its lambda."""
from __future__ import annotations

import pytest
import torch

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry


def paper(x: torch.Tensor, e_lambda: float, denominator: int) -> torch.Tensor:
    """X * sigmoid(1 / E), E = e_t* = 4 (sigma^2 + lambda) / ((t - mu)^2 + 2 sigma^2 + 2 lambda),
    sigma^2 = sum (x - mu)^2 / denominator per channel."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mu) ** 2).sum(dim=(2, 3), keepdim=True) / denominator
    energy = 4 * (var + e_lambda) / ((x - mu) ** 2 + 2 * var + 2 * e_lambda)
    return x * torch.sigmoid(1 / energy)


@pytest.mark.parametrize("e_lambda", [1e-4, 0.1])
def test_matches_energy_with_the_codes_denominator(e_lambda: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64) * 2
    simam = build_module("simam", 8, e_lambda=e_lambda)
    torch.testing.assert_close(simam(x), paper(x, e_lambda, 5 * 6 - 1))


def test_variance_divides_by_hw_minus_one_not_the_papers_m() -> None:
    """Eq. (5) averages over the M = H*W neurons; the official code divides by n = H*W - 1."""
    torch.manual_seed(1)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    out = build_module("simam", 4)(x)
    torch.testing.assert_close(out, paper(x, 1e-4, 8))
    assert not torch.allclose(out, paper(x, 1e-4, 9))
    assert torch.isnan(build_module("simam", 4)(torch.randn(2, 4, 1, 1))).all()  # 0 / 0, as in the official module


def test_lambda_changes_the_weights() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    assert not torch.allclose(build_module("simam", 4)(x), build_module("simam", 4, e_lambda=0.1)(x))
    # a lambda far above the variance flattens 1/E to 1/2: every weight tends to sigmoid(1/2)
    small = x * 0.1
    half = torch.sigmoid(torch.tensor(0.5, dtype=torch.float64))
    weights = build_module("simam", 4, e_lambda=10.0)(small) / small
    torch.testing.assert_close(weights, torch.full_like(small, half.item()), atol=1e-3, rtol=0)


@pytest.mark.parametrize("channels", [64, 256])
def test_parameter_free_like_the_official_code(channels: int) -> None:
    # ZjjConan/SimAM ae98f43, networks/attentions/simam_module.py: simam_module(channels) has no
    # parameters; outputs matched this module exactly (max |diff| 0.0, float32 and float64, lambda 1e-4 and 0.1).
    assert sum(p.numel() for p in build_module("simam", channels).parameters()) == 0
    assert list(build_module("simam", channels).buffers()) == []


def test_defaults_and_bad_values() -> None:
    assert get_module_entry("simam").schema.defaults() == {"e_lambda": 1e-4}
    assert build_module("simam", 8, e_lambda="1e-3").e_lambda == 1e-3
    for value in (0, -1e-4, "lambda", None):
        with pytest.raises(ConfigError) as info:
            build_module("simam", 8, e_lambda=value)
        assert info.value.key == "e_lambda"
