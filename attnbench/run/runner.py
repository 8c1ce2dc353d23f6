"""One point in, one result row out: the enabled measurements, in order, on the point's model.

Complexity always runs; the others follow the ablation file (`measure:`, `train:`) and the command
line (`--profile`); each lives in attnbench/run/measurements/ with its settings and its columns.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnbench.config.point import Point
from attnbench.core.errors import ConfigError, check_keys
from attnbench.measure.environment import environment_record
from attnbench.measure.latency import LatencyOptions
from attnbench.run.capacity import check_capacity
from attnbench.run.columns import column, family
from attnbench.run.measurements import MEASUREMENTS, EpochCallback, PointRun, Shared, in_order
from attnbench.run.measurements.latency import for_point, group_key

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

    def without(self, name: str) -> RunOptions:
        """The same options with measurement `name` switched off."""
        return dataclasses.replace(self, settings={k: v for k, v in self.settings.items() if k != name})

    def resolved_device(self) -> str:
        """'cpu' or 'cuda'; 'auto' picks CUDA when present."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def validate(self, points: tuple[Point, ...] = ()) -> RunOptions:
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
    enabled = [m for m in in_order() if options.enabled(m.name)]
    run = PointRun(point, device, options.shared, on_epoch, needs_weights=any(m.needs_weights for m in enabled))
    row: dict[str, Any] = {}
    for measurement in enabled:
        row.update(measurement.run(run, options.settings.get(measurement.name)))
        if measurement.name == "complexity":  # where every later row key has always stood
            row[DEVICE.key] = device
            row.update(_environment(device))
    row[SECONDS.key] = round(time.perf_counter() - started, 3)
    return row


def grouped_measurements(options: RunOptions) -> list[str]:
    """The enabled measurements that measure a comparison group together under these options (paired latency)."""
    return [m.name for m in in_order() if options.enabled(m.name) and m.grouped(options.settings.get(m.name))]


def comparison_groups(points: Sequence[Point]) -> list[list[Point]]:
    """The points by comparison group (attnbench.run.measurements.latency.group_key), baselines first, in file order."""
    groups: dict[tuple[Any, ...], list[Point]] = {}
    for point in points:
        groups.setdefault(group_key(point), []).append(point)
    return [sorted(members, key=lambda p: p.attention != "none") for members in groups.values()]


def run_group(points: Sequence[Point], options: RunOptions,
              on_epoch: Callable[[Point], EpochCallback | None] | None = None) -> list[dict[str, Any] | BaseException]:
    """Measure the points of one comparison group: the grouped measurements once for all, the others point by point.

    Returns each point's row, or the exception it failed with (one point failing leaves the others).
    Measurements before the first grouped one run for every point first; after the last, each
    point is finished and its model released before the next point's.
    """
    device = options.resolved_device()
    enabled = [m for m in in_order() if options.enabled(m.name)]
    needs_weights = any(m.needs_weights for m in enabled)
    runs = [PointRun(p, device, options.shared, None if on_epoch is None else on_epoch(p), needs_weights=needs_weights)
            for p in points]
    rows: list[dict[str, Any]] = [{} for _ in points]
    failed: dict[int, BaseException] = {}
    seconds = [0.0] * len(points)
    grouped = [i for i, m in enumerate(enabled) if m.grouped(options.settings.get(m.name))]
    last = grouped[-1] if grouped else -1

    def one(index: int, measurement: Any) -> None:
        started = time.perf_counter()
        try:
            rows[index].update(measurement.run(runs[index], options.settings.get(measurement.name)))
            if measurement.name == "complexity":
                rows[index][DEVICE.key] = device
                rows[index].update(_environment(device))
        except Exception as error:  # noqa: BLE001 - recorded with the point
            failed[index] = error
        seconds[index] += time.perf_counter() - started

    for position, measurement in enumerate(enabled[:last + 1]):
        live = [i for i in range(len(points)) if i not in failed]
        if position not in grouped:
            for index in live:
                one(index, measurement)
            continue
        started = time.perf_counter()
        try:
            results = measurement.run_group([runs[i] for i in live], options.settings.get(measurement.name))
        except Exception as error:  # noqa: BLE001 - the whole group's measurement failed: every point with it
            results = [error] * len(live)
        share = (time.perf_counter() - started) / max(len(live), 1)
        for index, result in zip(live, results):
            seconds[index] += share
            if isinstance(result, BaseException):
                failed[index] = result
            else:
                rows[index].update(result)
    for index in range(len(points)):
        if index not in failed:
            for measurement in enabled[last + 1:]:
                if index not in failed:
                    one(index, measurement)
        runs[index].__dict__.pop("model", None)  # the next points' models need the room
        runs[index].__dict__.pop("counting_model", None)
    out: list[dict[str, Any] | BaseException] = []
    for index, row in enumerate(rows):
        if index in failed:
            out.append(failed[index])
        else:
            row[SECONDS.key] = round(seconds[index], 3)
            out.append(row)
    return out


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as `a/b` keys."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

