"""torch.profiler traces per point (`--profile`, or `measure.profile: true`) under RESULTS/<grid>/profiles/<key>/."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from attnbench.core.errors import ConfigError
from attnbench.measure.profile import profile_model
from attnbench.run.columns import Column, column
from attnbench.run.measurements.base import Measurement, PointRun
from attnbench.run.measurements.registry import register_measurement

TRACES = column("profile_traces", "profile traces", "paths")


@register_measurement
class Profile(Measurement):
    """Traces TensorBoard's profiler plugin and Perfetto open; the settings are the folder they go to."""

    name = "profile"
    section = "flag"
    order = 40
    columns: ClassVar[tuple[Column, ...]] = (TRACES,)

    def parse(self, value: Any, key: str) -> Path | None:
        if value is None or value is False:
            return None
        if not isinstance(value, (str, Path)):
            raise ConfigError(key, value, "a folder for the traces")
        return Path(value)

    def run(self, run: PointRun, settings: Path) -> dict[str, Any]:
        point = run.point
        traces = profile_model(run.model, point.input_shape[1:], settings / point.key, run.device,
                               batch_size=point.batch_size, dtype=point.dtype, worker_name=point.key)
        return {TRACES.key: ", ".join(str(t) for t in traces)}
