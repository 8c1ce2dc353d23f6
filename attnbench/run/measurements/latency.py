"""Whole-model latency (`measure.latency`), halving the batch on out-of-memory (attnbench.measure.latency).

    measure:
      latency:                    # absent or false: no timing; true: the defaults below
        warmup: 10
        repeats: 50
        min_time_s: 0.0
        threads: null             # CPU intra-op threads; null keeps (and records) torch's count
        compile: false
        compile_mode: default
        cuda_graphs: false
        cold_l2: false
        slots: true               # also time each module alone (attnbench.run.measurements.slot_latency)
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from attnbench.config.point import Point
from attnbench.errors import ConfigError, check_keys
from attnbench.measure.latency import LatencyOptions, LatencyResult, measure_latency
from attnbench.run.columns import Column, column
from attnbench.run.measurements.base import Measurement, PointRun
from attnbench.run.measurements.oom import with_memory
from attnbench.run.measurements.registry import register_measurement
from attnbench.run.settings import construct

KEYS = ("warmup", "repeats", "min_time_s", "threads", "compile", "compile_mode", "cuda_graphs", "cold_l2", "slots")

LATENCY_IQR = column("latency_iqr_ms", "latency IQR (ms)", "ms")
LATENCY = column("latency_median_ms", "Latency (ms)", "ms", "lower", "pct", spread=LATENCY_IQR.key)
LATENCY_P10 = column("latency_p10_ms", "latency p10 (ms)", "ms")
LATENCY_P90 = column("latency_p90_ms", "latency p90 (ms)", "ms")
LATENCY_MEAN = column("latency_mean_ms", "latency mean (ms)", "ms")
LATENCY_STD = column("latency_std_ms", "latency std (ms)", "ms")
LATENCY_SAMPLES = column("latency_samples", "timed forwards", "count")
THROUGHPUT = column("throughput_ips", "images/s", "images/s", "higher", "pct")
THREADS = column("threads", "threads", "count")
BATCH_USED = column("batch_size_used", "batch timed", "images")
COMPILE = column("compile", "torch.compile", "bool")
COMPILE_MODE = column("compile_mode", "compile mode", "name")
CUDA_GRAPHS = column("cuda_graphs", "CUDA graphs", "bool")
COLD_L2 = column("cold_l2", "cold L2", "bool")
_STATISTICS = {LATENCY: "median_ms", LATENCY_IQR: "iqr_ms", LATENCY_P10: "p10_ms", LATENCY_P90: "p90_ms",
               LATENCY_MEAN: "mean_ms", LATENCY_STD: "std_ms", LATENCY_SAMPLES: "samples", THROUGHPUT: "throughput_ips",
               THREADS: "threads"}
_OPTIONS = {COMPILE: "compile", COMPILE_MODE: "compile_mode", CUDA_GRAPHS: "cuda_graphs", COLD_L2: "cold_l2"}


def timing_options(value: Any, key: str) -> LatencyOptions | None:
    """The LatencyOptions of a `measure.latency` value (true, false, or a mapping), without the point's axes."""
    if value is False or value is None:
        return None
    value = {} if value is True else value
    if not isinstance(value, dict):
        raise ConfigError(key, value, "true, false, or a mapping of " + ", ".join(KEYS))
    check_keys(value, KEYS, f"{key}.")
    options = construct(LatencyOptions, {k: v for k, v in value.items() if k != "slots"}, f"{key}.")
    try:  # device-independent checks now; the device is checked when the grid starts
        dataclasses.replace(options, cuda_graphs=False, cold_l2=False).validate()
    except ConfigError as error:
        raise error.under(key) from None
    return options


def for_point(options: LatencyOptions, device: str, point: Point, batch_size: int | None = None) -> LatencyOptions:
    """The full latency options of one point on `device` (at `batch_size` when an OOM retry lowered it)."""
    return dataclasses.replace(options, device=device, batch_size=point.batch_size if batch_size is None else batch_size,
                               dtype=point.dtype, channels_last=point.channels_last)


@register_measurement
class Latency(Measurement):
    """Median and spread of whole-model forwards at the point's batch, dtype and layout."""

    name = "latency"
    order = 20
    columns: ClassVar[tuple[Column, ...]] = (*_STATISTICS, BATCH_USED, *_OPTIONS)

    def __init__(self) -> None:
        self.warmed: set[LatencyOptions] = set()  # configurations already timed once in this process

    def parse(self, value: Any, key: str) -> LatencyOptions | None:
        return timing_options(value, key)

    def check(self, settings: LatencyOptions, points: tuple[Point, ...], device: str) -> None:
        for point in sorted({(p.batch_size, p.dtype, p.channels_last): p for p in points}.values(), key=str):
            try:
                for_point(settings, device, point).validate()
            except ConfigError as error:
                raise (error.under("measure.latency") if error.key not in ("dtype", "device") else error) from None

    def run(self, run: PointRun, settings: LatencyOptions) -> dict[str, Any]:
        sample = run.point.input_shape[1:]

        def timed(batch: int) -> LatencyResult:
            options = for_point(settings, run.device, run.point, batch)
            if options not in self.warmed:
                # The first timing of a configuration in a process reads 10-40 % slow on CPU (allocator and
                # kernel caches still growing) and baselines run first, so one full measurement is thrown away.
                measure_latency(run.model, sample, options)
                self.warmed.add(options)
            return measure_latency(run.model, sample, options)

        timing, batch = with_memory(timed, run.point.batch_size, run.shared.floor_for(run.point.batch_size))
        run.results[self.name] = (timing, batch)
        row = {column.key: getattr(timing, field) for column, field in _STATISTICS.items()}
        row.update({column.key: getattr(timing.options, field) for column, field in _OPTIONS.items()})
        row[BATCH_USED.key] = batch
        return row
