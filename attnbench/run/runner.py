"""One point in, one result row out: the enabled measurements, in order, on the point's model.

Complexity always runs; the others follow the ablation file (`measure:`, `train:`) and the command
line (`--profile`); each lives in attnbench/run/measurements/ with its settings and its columns.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from attnbench.config.point import Point
from attnbench.errors import ConfigError, check_keys
from attnbench.measure.environment import environment_record
from attnbench.run.capacity import check_capacity
from attnbench.run.columns import column, family
from attnbench.measure.latency import LatencyOptions
from attnbench.run.measurements import MEASUREMENTS, EpochCallback, PointRun, Shared, in_order
from attnbench.run.measurements.latency import for_point

DEVICES = ("cpu", "cuda", "auto")
SHARED_KEYS = ("oom_floor", "oom_retry")
DEVICE = column("device", "device", "name")
SECONDS = column("seconds", "seconds", "s")
ENVIRONMENT = family("env/")


@dataclass(frozen=True)
class RunOptions:
    """What to measure for every point, and where: each enabled measurement's settings, by name."""

    device: str = "auto"
    settings: Mapping[str, Any] = field(default_factory=dict)  # complexity runs whether named or not
    shared: Shared = field(default_factory=Shared)

    @property
    def train(self) -> Any:
        """The training settings, or None when points are not trained."""
        return self.settings.get("training")

    def enabled(self, name: str) -> bool:
        """Whether measurement `name` runs for every point."""
        return MEASUREMENTS.get(name, "measurement").section == "always" or name in self.settings

    def without(self, name: str) -> "RunOptions":
        """The same options with measurement `name` switched off."""
        return dataclasses.replace(self, settings={k: v for k, v in self.settings.items() if k != name})

    def resolved_device(self) -> str:
        """'cpu' or 'cuda'; 'auto' picks CUDA when present."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def validate(self, points: tuple[Point, ...] = ()) -> "RunOptions":
        """Raise ConfigError for options this machine cannot honour, before anything runs."""
        if self.device not in DEVICES:
            raise ConfigError("device", self.device, "one of " + ", ".join(DEVICES))
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", self.device, "cpu or auto: no CUDA device is available here")
        device = self.resolved_device()
        for point in {(p.batch_size, p.dtype, p.channels_last): p for p in points}.values():
            try:  # dtype and device are checked even without timing: every measurement runs on them
                for_point(LatencyOptions(), device, point).validate()
            except ConfigError as error:
                if error.key in ("dtype", "device"):
                    raise
        for measurement in in_order():
            if measurement.name in self.settings:
                measurement.check(self.settings[measurement.name], points, device)
        check_capacity(points, device)
        return self


def parse_options(measure: Any, train: Any, device: str = "auto", profile_dir: Path | None = None) -> RunOptions:
    """Run options from an ablation file's `measure:` and `train:` sections (and --profile), each part to its owner."""
    measure = {} if measure is None else measure
    if not isinstance(measure, dict):
        raise ConfigError("measure", measure, "a mapping of measurement options")
    readers = [m for m in in_order() if m.section == "measure"]
    check_keys(measure, tuple(dict.fromkeys([*(m.key for m in readers), *SHARED_KEYS])), "measure.")
    settings: dict[str, Any] = {}
    for measurement in in_order():
        if measurement.section == "measure" and measurement.key in measure:
            value, key = measure[measurement.key], f"measure.{measurement.key}"
        elif measurement.section == "train":
            value, key = train, "train"
        elif measurement.section == "flag":
            value, key = profile_dir if measurement.name == "profile" else None, measurement.name
            value = measure.get(measurement.name) if value is None and measurement.name in measure else value
        else:
            continue
        parsed = measurement.parse(value, key)
        if parsed is not None:
            settings[measurement.name] = parsed
    return RunOptions(device, settings, _shared(measure))


def _shared(measure: dict[str, Any]) -> Shared:
    floor = measure.get("oom_floor", 1)
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 1:
        raise ConfigError("measure.oom_floor", floor, "a positive integer")
    retry = measure.get("oom_retry", True)
    if not isinstance(retry, bool):
        raise ConfigError("measure.oom_retry", retry, "true (halve the batch on out-of-memory) or false (fail the point)")
    return Shared(floor, retry)


def options_for(ablation: Any, device: str = "auto", profile_dir: Path | None = None) -> RunOptions:
    """Run options from an ablation's `measure:` and `train:` sections, checked against its points and this machine."""
    return parse_options(ablation.measure, ablation.train, device, profile_dir).validate(ablation.points)


@functools.lru_cache(maxsize=2)
def _environment(device: str) -> dict[str, Any]:
    return {ENVIRONMENT.key(key): value for key, value in _flat(environment_record(device)).items()}


def run_point(point: Point, options: RunOptions, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Measure one point; raises on failure (the grid records the error and goes on)."""
    started = time.perf_counter()
    device = options.resolved_device()
    run = PointRun(point, device, options.shared, on_epoch)
    row: dict[str, Any] = {}
    for measurement in in_order():
        if options.enabled(measurement.name):
            row.update(measurement.run(run, options.settings.get(measurement.name)))
            if measurement.name == "complexity":  # where every later row key has always stood
                row[DEVICE.key] = device
                row.update(_environment(device))
    row[SECONDS.key] = round(time.perf_counter() - started, 3)
    return row


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as `a/b` keys."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

