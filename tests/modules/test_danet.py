"""DANet's PAM and CAM against the paper's equations, the official code's CAM trick and parameter counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attnbench import ConfigError, build_module


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomised(channels: int, mode: str = "both") -> nn.Module:
    module = build_module("danet", channels, mode=mode).double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 2 / channels ** 0.5)
    return module


def pam_reference(pam: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eqs. 1-2: s_ji = softmax_i(B_i . C_j); E_j = alpha * sum_i s_ji D_i + A_j, position by position."""
    b, c, d = (F.conv2d(x, m.weight, m.bias).flatten(2) for m in (pam.query_conv, pam.key_conv, pam.value_conv))
    out = torch.zeros_like(d)
    for j in range(b.shape[2]):
        s = torch.softmax(torch.einsum("nc,nci->ni", b[:, :, j], c), dim=1)
        out[:, :, j] = torch.einsum("ni,nci->nc", s, d)
    return pam.gamma * out.reshape(x.shape) + x


def cam_reference(cam: nn.Module, x: torch.Tensor, sign: float = -1.0) -> torch.Tensor:
    """Eqs. 3-4 channel by channel: x_ji = softmax_i(sign * A_i . A_j); E_j = beta * sum_i x_ji A_i + A_j.
    sign = -1 is what the official energy_new computes; eq. (3) as printed is sign = +1."""
    a = x.flatten(2)
    out = torch.zeros_like(a)
    for j in range(a.shape[1]):
        weights = torch.softmax(sign * torch.einsum("np,nip->ni", a[:, j], a), dim=1)
        out[:, j] = torch.einsum("ni,nip->np", weights, a)
    return cam.gamma * out.reshape(x.shape) + x


def test_pam_matches_paper_equations() -> None:
    torch.manual_seed(0)
    danet = randomised(16, "pam")
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(danet(x), pam_reference(danet.pam, x))


def test_cam_uses_the_official_max_minus_energy() -> None:
    """energy_new = max(energy) - energy: softmax(-A A^T), not eq. (3)'s softmax(A A^T)."""
    torch.manual_seed(1)
    danet = randomised(16, "cam")
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64) * 0.5
    torch.testing.assert_close(danet(x), cam_reference(danet.cam, x))
    assert not torch.allclose(danet(x), cam_reference(danet.cam, x, sign=1.0))
    # and literally as the official code writes it: the row maximum minus the energy, then the softmax
    flat = x.flatten(2)
    energy = flat @ flat.transpose(1, 2)
    attention = torch.softmax(energy.max(dim=-1, keepdim=True)[0].expand_as(energy) - energy, dim=-1)
    torch.testing.assert_close(danet(x), danet.cam.gamma * (attention @ flat).reshape(x.shape) + x)


def test_both_is_the_heads_sum_of_the_two_modules() -> None:
    torch.manual_seed(2)
    danet = randomised(16)
    x = torch.randn(1, 16, 3, 4, dtype=torch.float64) * 0.5
    torch.testing.assert_close(danet(x), pam_reference(danet.pam, x) + cam_reference(danet.cam, x))
    fresh = build_module("danet", 16)
    assert fresh.pam.gamma.item() == 0 and fresh.cam.gamma.item() == 0
    torch.testing.assert_close(fresh(x.float()), 2 * x.float())  # each module keeps its residual


@pytest.mark.parametrize("mode", ["pam", "cam"])
def test_single_modules_start_as_identity(mode: str) -> None:
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(build_module("danet", 16, mode=mode)(x), x)


@pytest.mark.parametrize("channels,pam,cam", [(64, 5201, 1), (256, 82241, 1)])
def test_parameter_counts_of_official_code(channels: int, pam: int, cam: int) -> None:
    # junfu1115/DANet b0a0fa0, encoding/nn/da_att.py: sum(p.numel()) of PAM_Module(C) and CAM_Module(C);
    # outputs matched these modules exactly (max |diff| 0, float64) after loading their state dicts.
    assert n_params(build_module("danet", channels, mode="pam")) == pam
    assert n_params(build_module("danet", channels, mode="cam")) == cam
    assert n_params(build_module("danet", channels)) == pam + cam


def test_default_and_widths() -> None:
    danet = build_module("danet", 64)
    assert danet.pam is not None and danet.cam is not None
    assert danet.pam.query_conv.out_channels == 8 and danet.pam.value_conv.out_channels == 64
    assert build_module("danet", 64, mode="cam").pam is None


@pytest.mark.parametrize("channels,hp", [(16, {"mode": "sum"}), (4, {"mode": "pam"}), (4, {})])
def test_bad_values_name_their_key(channels: int, hp: dict) -> None:
    with pytest.raises(ConfigError) as info:
        build_module("danet", channels, **hp)
    assert info.value.key == "mode"
    build_module("danet", 4, mode="cam")  # CAM has no reduction, any width works
