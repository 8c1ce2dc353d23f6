"""He et al.'s CIFAR ResNets: the paper's parameter counts, option A shortcuts, slots."""
from __future__ import annotations

import pytest
import torch

from attnbench import build_model
from attnbench.backbones import attention_slots
from attnbench.backbones.cifar_resnet import ZeroPadShortcut


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _by_hand(n: int, classes: int = 10) -> int:
    """Stem conv + BN, 3 stages of n blocks (two 3x3 convs + two BNs each), option A shortcuts, linear head."""
    total = 3 * 16 * 9 + 2 * 16
    in_channels = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += in_channels * width * 9 + width * width * 9 + 4 * width
            in_channels = width
    return total + 64 * classes + classes


@pytest.mark.parametrize("depth,n,published_m", [(20, 3, 0.27), (32, 5, 0.46), (44, 7, 0.66), (56, 9, 0.85), (110, 18, 1.7)])
def test_parameter_counts_of_the_paper(depth: int, n: int, published_m: float) -> None:
    """ResNet paper, Table 6: 0.27 M, 0.46 M, 0.66 M, 0.85 M, 1.7 M."""
    count = n_params(build_model(f"cifar_resnet{depth}", num_classes=10))
    assert count == _by_hand(n)
    assert round(count / 1e6, 2 if depth < 110 else 1) == published_m


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    shortcut = ZeroPadShortcut(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.all(y[:, :8] == 0) and torch.all(y[:, 24:] == 0)


def test_feature_maps_and_slots() -> None:
    model = build_model("cifar_resnet20", "se", num_classes=10, reduction=4)
    slots = attention_slots(model)
    assert len(slots) == 9
    shapes = {}
    def recorder(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:  # returns None: args pass unchanged
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        return hook

    hooks = [m.register_forward_pre_hook(recorder(n)) for n, m in slots.items()]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for hook in hooks:
        hook.remove()
    assert shapes["layer1.0.attention"] == (16, 32, 32)
    assert shapes["layer2.0.attention"] == (32, 16, 16)
    assert shapes["layer3.2.attention"] == (64, 8, 8)
    dcn = [n for n, m in attention_slots(build_model("cifar_resnet20", "dcn")).items() if type(m).__name__ == "DeformConv"]
    assert len(dcn) == 2 * 3 * 2  # both 3x3 convs of every block in stages 2 and 3
