"""Pieces shared by the channel-attention modules: gate non-linearities and the reduction check."""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor
from torch.nn import functional as F

from attnbench.errors import ConfigError

GATES = ("sigmoid", "hard_sigmoid")


def apply_gate(gate: str, x: Tensor) -> Tensor:
    """Sigmoid, or PyTorch's hard sigmoid relu6(x + 3) / 6 (MobileNetV3's cheap gate)."""
    return F.hardsigmoid(x) if gate == "hard_sigmoid" else x.sigmoid()


def reduced_channels_check(key: str = "reduction") -> Callable[[int, dict[str, Any]], None]:
    """A channel check: C // reduction must leave at least one hidden channel."""

    def check(channels: int, hp: dict[str, Any]) -> None:
        if hp[key] > channels:
            raise ConfigError(key, hp[key], f"at most the channel count {channels} (C // {key} must be >= 1)")

    return check
