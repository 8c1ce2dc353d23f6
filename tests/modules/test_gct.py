"""GCT against the paper's equations, the official code's eps placement and parameter counts, and its switches."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench import ConfigError, build_module
from attnbench.modules import get_module_entry


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(gct: nn.Module) -> None:
    with torch.no_grad():
        for p in gct.parameters():
            p.copy_(torch.randn_like(p))


def paper(gct: nn.Module, x: torch.Tensor, norm_eps: float, abs_input: bool = True) -> torch.Tensor:
    """GCT eqs. (1)-(3): s = alpha ||x_c||, s_hat = K s / ||s||, out = x (1 + tanh(gamma s_hat + beta)),
    K = sqrt(C) (l2) or C (l1), with `norm_eps` inside the channel norm."""
    c = x.shape[1]
    alpha, gamma, beta = (p.flatten() for p in (gct.alpha, gct.gamma, gct.beta))
    if gct.mode == "l2":
        s = alpha * torch.sqrt((x**2).sum(dim=(2, 3)) + gct.epsilon)
        s_hat = c**0.5 * s / torch.sqrt((s**2).sum(dim=1, keepdim=True) + norm_eps)
    else:
        s = alpha * (x.abs() if abs_input else x).sum(dim=(2, 3))
        s_hat = c * s / (s.abs().sum(dim=1, keepdim=True) + norm_eps)
    return x * (1 + torch.tanh(gamma * s_hat + beta))[:, :, None, None]


@pytest.mark.parametrize("mode", ["l2", "l1"])
def test_matches_paper_equations_with_the_codes_eps(mode: str) -> None:
    torch.manual_seed(0)
    c = 16
    gct = build_module("gct", c, mode=mode).double()
    randomise(gct)
    x = torch.randn(2, c, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(gct(x), paper(gct, x, norm_eps=c * gct.epsilon))


@pytest.mark.parametrize("mode", ["l2", "l1"])
def test_eps_sits_inside_the_channel_mean_as_in_the_official_code(mode: str) -> None:
    """The code divides by mean_c (not sum_c), which scales the paper's eps by C; visible with a large eps."""
    torch.manual_seed(1)
    c = 8
    gct = build_module("gct", c, mode=mode, epsilon=0.5).double()
    randomise(gct)
    x = torch.randn(2, c, 3, 3, dtype=torch.float64) * 0.1
    torch.testing.assert_close(gct(x), paper(gct, x, norm_eps=c * 0.5))
    assert not torch.allclose(gct(x), paper(gct, x, norm_eps=0.5))


def test_after_relu_skips_the_abs_in_l1_mode_only() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    plain = build_module("gct", 8, mode="l1").double()
    randomise(plain)
    skipped = build_module("gct", 8, mode="l1", after_relu=True).double()
    skipped.load_state_dict(plain.state_dict())
    torch.testing.assert_close(skipped(x), paper(skipped, x, 8 * 1e-5, abs_input=False))
    torch.testing.assert_close(skipped(x.relu()), plain(x.relu()))  # the same on non-negative inputs
    assert not torch.allclose(skipped(x), plain(x))
    l2 = build_module("gct", 8, after_relu=True).double()
    l2.load_state_dict(plain.state_dict())
    torch.testing.assert_close(l2(x), paper(l2, x, 8 * 1e-5))  # no effect in l2 mode


def test_official_init_is_the_identity() -> None:
    gct = build_module("gct", 32)
    assert torch.all(gct.alpha == 1) and torch.all(gct.gamma == 0) and torch.all(gct.beta == 0)
    x = torch.randn(2, 32, 5, 5)
    assert torch.equal(gct(x), x)


@pytest.mark.parametrize("channels,expected", [(64, 192), (256, 768)])
def test_parameter_count_of_official_code(channels: int, expected: int) -> None:
    # z-x-yang/GCT 68983ed, PyTorch/GCT.py: sum(p.numel()) of GCT(channels); outputs matched this
    # module exactly (max |diff| 0.0, float32 and float64; both modes, after_relu on and off) after
    # loading its state dict.
    assert n_params(build_module("gct", channels)) == expected


def test_defaults_and_bad_values() -> None:
    assert get_module_entry("gct").schema.defaults() == {"mode": "l2", "epsilon": 1e-5, "after_relu": False}
    assert build_module("gct", 8, epsilon="1e-3").epsilon == 1e-3  # YAML's string form
    for hp, key in [({"mode": "linf"}, "mode"), ({"epsilon": 0}, "epsilon"), ({"epsilon": -1e-5}, "epsilon"),
                    ({"after_relu": 1}, "after_relu")]:
        with pytest.raises(ConfigError) as info:
            build_module("gct", 8, **hp)
        assert info.value.key == key
