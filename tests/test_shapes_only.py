"""Counting from shapes only: the same counts as a real trace, no arithmetic, and a real trace wherever values could matter."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench.config.point import make_point
from attnbench.measure import complexity
from attnbench.measure.complexity import count_shapes_only, measure_complexity
from attnbench.measure.shapes_only import KERNELS, READ_METHODS, shape_kernels
from attnbench.run.measurements.base import PointRun, build_point_model

MODULES = ["none", "se", "cbam", "eca", "sge", "fca", "nonlocal", "sk", "lka", "dcn", "triplet", "ema", "cc"]


def _on_meta(point):
    with torch.device("meta"):
        model = build_point_model(point)
    return model.to_empty(device="cpu")


@pytest.mark.parametrize("module", MODULES)
def test_counts_equal_a_real_trace(module: str) -> None:
    point = make_point("cifar_resnet18", module, input_size=16, num_classes=10)
    exact = measure_complexity(build_point_model(point), (1, 3, 16, 16))
    fast = count_shapes_only(_on_meta(point), (1, 3, 16, 16))
    assert fast == exact


def _conv(x_channels: int = 3) -> nn.Module:
    return nn.Conv2d(x_channels, 4, 3)


class Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv()

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if y.mean() > 0 else y + 1  # the graph depends on a value


class Mask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv()

    def forward(self, x):
        y = self.conv(x)
        return y[y > 0].sum()  # a shape that depends on values


class Size(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv()

    def forward(self, x):
        y = self.conv(x)
        return torch.zeros(int(y.abs().max() * 0) + 3) + y.sum()


class Nonzero(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv()

    def forward(self, x):
        y = self.conv(x)
        return y.flatten()[torch.nonzero(y.flatten() > 0).flatten()].sum()


class OnShapes(nn.Module):
    """Python control flow on traced sizes only: exact from shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = _conv()

    def forward(self, x):
        y = self.conv(x)
        _, _, h, w = y.shape
        if h * w < 2:
            return y
        return y * torch.arange(w).float() + y[:, :, :, torch.arange(w) % 2]


@pytest.mark.parametrize("cls", [Branch, Mask, Size, Nonzero])
def test_values_that_reach_the_graph_send_it_to_a_real_trace(cls: type) -> None:
    torch.manual_seed(0)
    model = cls()
    assert count_shapes_only(model, (1, 3, 8, 8)) is None
    assert measure_complexity(model, (1, 3, 8, 8), shapes_only=True) == measure_complexity(model, (1, 3, 8, 8))


def test_control_flow_on_shapes_is_counted_from_shapes() -> None:
    torch.manual_seed(0)
    model = OnShapes()
    fast = count_shapes_only(model, (1, 3, 8, 8))
    assert fast is not None and fast == measure_complexity(model, (1, 3, 8, 8))


def test_torchs_kernels_and_tensor_methods_come_back() -> None:
    torch.manual_seed(0)
    conv, x = nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    expected = conv(x)
    before = KERNELS.answered
    with shape_kernels():
        out = conv(x)
    assert KERNELS.answered > before and out.shape == expected.shape
    torch.testing.assert_close(conv(x), expected)
    with pytest.raises(RuntimeError), shape_kernels():
        raise RuntimeError("inside")
    torch.testing.assert_close(conv(x), expected)
    count_shapes_only(Branch(), (1, 3, 8, 8))
    assert not any(name in torch.Tensor.__dict__ for name in READ_METHODS if name not in ("__array__",))
    assert bool(torch.tensor(1.0)) and int(torch.tensor(3)) == 3


def test_integers_keep_their_values() -> None:
    with shape_kernels():
        a = torch.arange(6)
        assert torch.equal(a + a, torch.arange(0, 12, 2)) and torch.equal(a * 2, torch.arange(0, 12, 2))


def test_a_counting_run_builds_no_initialised_model() -> None:
    point = make_point("cifar_resnet20", "se", input_size=16, num_classes=10)
    run = PointRun(point, "cpu", needs_weights=False)
    counted = count_shapes_only(run.counting_model, (1, 3, 16, 16))
    assert "model" not in run.__dict__ and counted == measure_complexity(build_point_model(point), (1, 3, 16, 16))
    timed = PointRun(point, "cpu", needs_weights=True)
    assert timed.counting_model is timed.model


def test_a_trace_that_breaks_is_counted_the_ordinary_way(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    def broken():
        raise RuntimeError("no shape kernels today")

    monkeypatch.setattr(complexity, "shape_kernels", broken)
    assert count_shapes_only(model, (1, 3, 8, 8)) is None
    assert measure_complexity(model, (1, 3, 8, 8), shapes_only=True) == measure_complexity(model, (1, 3, 8, 8))
