"""The module alone (`measure.latency.slots`, on by default with latency): each slot timed at its real shape,
with its roofline on a GPU (attnbench.measure.slot_shapes, attnbench.measure.roofline)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from attnbench.core.errors import ConfigError
from attnbench.measure.latency import LatencyOptions
from attnbench.measure.roofline import device_peaks, minimum_bytes, roofline
from attnbench.measure.slot_shapes import measure_slots
from attnbench.run.columns import Column, column, family
from attnbench.run.measurements.base import Measurement, PointRun
from attnbench.run.measurements.complexity import BY_SLOT
from attnbench.run.measurements.latency import timing_options
from attnbench.run.measurements.registry import register_measurement

ROOFLINE_FIELDS = ("bound", "bandwidth_fraction", "compute_fraction", "roofline_fraction")
SLOT = family("slot/", ("shape", "latency_ms", "latency_iqr_ms", *ROOFLINE_FIELDS))
ATTENTION_LATENCY = column("attention_latency_ms", "Modules alone (ms)", "ms", "lower", "pct")


@register_measurement
class SlotLatency(Measurement):
    """Each slot module alone at the shape it sees in the model, timed like the whole model."""

    name = "slot_latency"
    reads = "latency"  # configured by `measure.latency.slots`
    order = 25
    columns: ClassVar[tuple[Column, ...]] = (ATTENTION_LATENCY,)

    def parse(self, value: Any, key: str) -> bool | None:
        if timing_options(value, key) is None:
            return None
        slots = value.get("slots", True) if isinstance(value, dict) else True
        if not isinstance(slots, bool):
            raise ConfigError(f"{key}.slots", slots, "true or false")
        return slots or None

    def run(self, run: PointRun, settings: bool) -> dict[str, Any]:
        timing, batch = run.results["latency"]
        options: LatencyOptions = timing.options
        sample = run.point.input_shape[1:]
        by_slot = run.results["complexity"].by_slot
        peaks = device_peaks(torch.cuda.get_device_name(), run.point.dtype) if run.device == "cuda" else None
        modules = dict(run.model.named_modules())
        row: dict[str, Any] = {}
        total = 0.0
        for name, alone in measure_slots(run.model, sample, options).items():
            total += alone.median_ms
            row[SLOT.key(name, "shape")] = "x".join(map(str, alone.input_shape))
            row[SLOT.key(name, "latency_ms")] = alone.median_ms
            row[SLOT.key(name, "latency_iqr_ms")] = alone.iqr_ms
            if peaks is not None and name in by_slot:
                counts = by_slot[name]
                flops = 2 * counts[BY_SLOT.fields[0]] + counts[BY_SLOT.fields[1]]
                moved = minimum_bytes(modules[name], alone.input_shape, run.point.dtype, batch)
                line = roofline(batch * flops, moved, alone.median_ms / 1e3, peaks)
                row.update({SLOT.key(name, field): line[field] for field in ROOFLINE_FIELDS})
        row[ATTENTION_LATENCY.key] = total
        return row
