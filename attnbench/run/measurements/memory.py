"""Peak memory (`measure.memory: true`) of inference and of one training step (attnbench.measure.memory)."""
from __future__ import annotations

from typing import Any, ClassVar

from attnbench.core.errors import ConfigError
from attnbench.measure.memory import MemoryResult, measure_memory
from attnbench.run.columns import Column, column
from attnbench.run.measurements.base import Measurement, PointRun
from attnbench.run.measurements.oom import with_memory
from attnbench.run.measurements.registry import register_measurement

INFERENCE_PEAK = column("memory_inference_peak_bytes", "Memory (MB)", "bytes", "lower", "pct", scale=2.0**-20)
TRAIN_PEAK = column("memory_train_peak_bytes", "Train peak (MB)", "bytes", "lower", "pct", scale=2.0**-20)
SAVED = column("memory_saved_for_backward_bytes", "saved for backward (MB)", "bytes", "lower", "pct", scale=2.0**-20)
PARAMETER_BYTES = column("memory_parameter_bytes", "weights (MB)", "bytes", scale=2.0**-20)
INFERENCE_RESERVED = column("memory_inference_reserved_bytes", "inference reserved (MB)", "bytes", scale=2.0**-20)
TRAIN_RESERVED = column("memory_train_reserved_bytes", "train reserved (MB)", "bytes", scale=2.0**-20)
METHOD = column("memory_method", "memory method", "name")
BATCH = column("memory_batch_size", "memory batch", "images")
BATCH_USED = column("memory_batch_size_used", "batch measured", "images")
_FIELDS = {INFERENCE_PEAK: "inference_peak_bytes", TRAIN_PEAK: "train_peak_bytes", SAVED: "saved_for_backward_bytes",
           PARAMETER_BYTES: "parameter_bytes", INFERENCE_RESERVED: "inference_reserved_bytes",
           TRAIN_RESERVED: "train_reserved_bytes", METHOD: "method", BATCH: "batch_size"}


@register_measurement
class Memory(Measurement):
    """Peaks above the level before the step, for an eval forward and one training step."""

    name = "memory"
    order = 30
    columns: ClassVar[tuple[Column, ...]] = (*_FIELDS, BATCH_USED)

    def parse(self, value: Any, key: str) -> bool | None:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
        return value or None

    def run(self, run: PointRun, settings: bool) -> dict[str, Any]:
        point = run.point

        def measured(batch: int) -> MemoryResult:
            return measure_memory(run.model, point.input_shape[1:], run.device, point.dtype, batch, point.channels_last)

        result, batch = with_memory(measured, point.batch_size, run.shared.floor_for(point.batch_size))
        row = {column.key: getattr(result, field) for column, field in _FIELDS.items()}
        row[BATCH_USED.key] = batch
        return row
