"""Pieces shared by the channel-attention modules: gate non-linearities, the hidden width and the reduction check."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.nn import functional as F

from attnbench.core.errors import ConfigError

GATES = ("sigmoid", "hard_sigmoid")


def apply_gate(gate: str, x: Tensor) -> Tensor:
    """Sigmoid, or PyTorch's hard sigmoid relu6(x + 3) / 6 (MobileNetV3's cheap gate)."""
    return F.hardsigmoid(x) if gate == "hard_sigmoid" else x.sigmoid()


def reduced_width(channels: int, reduction: int, divisor: int | None = None, round_limit: float = 0.0) -> int:
    """Hidden width of a reduce-expand gate: C // r (the SE paper), or C / r rounded to a multiple of `divisor`.

    The rounding is timm's make_divisible (timm/layers/helpers.py; TF-slim's MobileNet rule): C / r to
    the nearest multiple of the divisor, halves up, and at least one divisor; then one divisor more if
    that fell below round_limit * C / r. timm's SEModule passes round_limit 0 (never); MobileNetV3 in
    timm and torchvision keeps the default 0.9 ("do not round down by more than 10%").
    """
    if divisor is None:
        return channels // reduction
    # int(v + divisor / 2) // divisor * divisor for v = C / r, in integers so no float rounding enters
    width = max(divisor, (2 * channels + divisor * reduction) // (2 * reduction) // divisor * divisor)
    if width < round_limit * channels / reduction:
        width += divisor
    return width


def reduced_channels_check(key: str = "reduction") -> Callable[[int, dict[str, Any]], None]:
    """A channel check: C // reduction must leave at least one hidden channel (rounding to a `divisor` always does)."""

    def check(channels: int, hp: dict[str, Any]) -> None:
        if hp.get("divisor") is None and hp[key] > channels:
            raise ConfigError(key, hp[key], f"at most the channel count {channels} (C // {key} must be >= 1)")

    return check
