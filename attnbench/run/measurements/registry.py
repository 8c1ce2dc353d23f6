"""The measurements, by name, in the order the runner runs them."""
from __future__ import annotations

from attnbench.core.registry import Registry
from attnbench.run.measurements.base import Measurement

MEASUREMENTS: Registry[Measurement] = Registry("measurement")


def register_measurement(cls: type[Measurement]) -> type[Measurement]:
    """Class decorator: one instance of the measurement joins the registry under its name."""
    MEASUREMENTS.add(cls.name, cls())
    return cls


def in_order() -> list[Measurement]:
    """Every registered measurement, by increasing `order`."""
    return sorted(MEASUREMENTS, key=lambda m: m.order)
