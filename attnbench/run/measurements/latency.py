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
        paired: true              # a grid times each comparison group together (attnbench.measure.paired);
                                  # false: each point on its own, one after another
        rounds: null              # paired: rounds the `repeats` forwards per model are spread over (null: one
                                  # forward per model per round, the most rounds)

Paired timing (the default in a grid): the points of one comparison group (same backbone, input,
batch, classes, dtype, layout, device) are timed together in interleaved rounds with the group's
baseline and an A/A copy of it; each variant's row gets its change against the baseline with a
95 % bootstrap interval (`latency_change_pct`, `latency_change_ci_low_pct`,
`latency_change_ci_high_pct`), the baseline's row the A/A control's (`latency_aa_change_pct`...),
the run's noise floor. A point measured alone (a search's trial) is timed sequentially.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from attnbench.config.point import Point, make_point
from attnbench.core.errors import ConfigError, check_keys
from attnbench.measure.latency import LatencyOptions, LatencyResult, measure_latency
from attnbench.measure.paired import AA, Change, PairedResult, measure_paired, rounds_for
from attnbench.run.columns import Column, column
from attnbench.run.measurements.base import Measurement, PointRun, build_point_model
from attnbench.run.measurements.oom import with_memory
from attnbench.run.measurements.registry import register_measurement
from attnbench.run.settings import construct

PAIRING_KEYS = ("paired", "rounds")
KEYS = ("warmup", "repeats", "min_time_s", "threads", "compile", "compile_mode", "cuda_graphs", "cold_l2", "slots",
        *PAIRING_KEYS)
DEFAULT_ROUNDS = None  # one timed forward per model per round

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
METHOD = column("latency_method", "latency method", "name")  # "paired" or "sequential"
CHANGE = column("latency_change_pct", "Δlatency % (paired)", "%")
CHANGE_LOW = column("latency_change_ci_low_pct", "Δlatency 95 % CI low (%)", "%")
CHANGE_HIGH = column("latency_change_ci_high_pct", "Δlatency 95 % CI high (%)", "%")
AA_CHANGE = column("latency_aa_change_pct", "A/A Δlatency % (noise floor)", "%")
AA_LOW = column("latency_aa_change_ci_low_pct", "A/A Δlatency 95 % CI low (%)", "%")
AA_HIGH = column("latency_aa_change_ci_high_pct", "A/A Δlatency 95 % CI high (%)", "%")
ROUNDS = column("latency_rounds", "paired rounds", "count")
ROUND_MEDIANS = column("latency_round_medians_ms", "per-round medians (ms)", "ms")
PAIRED_WITH = column("latency_baseline_key", "timed with baseline", "point key")
GROUP_SIZE = column("latency_group_size", "models timed together", "count")  # the A/A copy included
_STATISTICS = {LATENCY: "median_ms", LATENCY_IQR: "iqr_ms", LATENCY_P10: "p10_ms", LATENCY_P90: "p90_ms",
               LATENCY_MEAN: "mean_ms", LATENCY_STD: "std_ms", LATENCY_SAMPLES: "samples", THROUGHPUT: "throughput_ips",
               THREADS: "threads"}
_OPTIONS = {COMPILE: "compile", COMPILE_MODE: "compile_mode", CUDA_GRAPHS: "cuda_graphs", COLD_L2: "cold_l2"}


@dataclass(frozen=True)
class LatencySettings:
    """`measure.latency`: how to time (LatencyOptions), and whether a grid times each comparison group paired."""

    options: LatencyOptions
    paired: bool = True
    rounds: int | None = DEFAULT_ROUNDS


def timing_options(value: Any, key: str) -> LatencyOptions | None:
    """The LatencyOptions of a `measure.latency` value (true, false, or a mapping), without the point's axes."""
    if value is False or value is None:
        return None
    value = {} if value is True else value
    if not isinstance(value, dict):
        raise ConfigError(key, value, "true, false, or a mapping of " + ", ".join(KEYS))
    check_keys(value, KEYS, f"{key}.")
    options = construct(LatencyOptions, {k: v for k, v in value.items() if k not in ("slots", *PAIRING_KEYS)}, f"{key}.")
    try:  # device-independent checks now; the device is checked when the grid starts
        dataclasses.replace(options, cuda_graphs=False, cold_l2=False).validate()
    except ConfigError as error:
        raise error.under(key) from None
    return options


def latency_settings(value: Any, key: str) -> LatencySettings | None:
    """The LatencySettings of a `measure.latency` value; None when timing is off."""
    options = timing_options(value, key)
    if options is None:
        return None
    section = value if isinstance(value, dict) else {}
    paired, rounds = section.get("paired", True), section.get("rounds", DEFAULT_ROUNDS)
    if not isinstance(paired, bool):
        raise ConfigError(f"{key}.paired", paired, "true (time each comparison group together) or false (one by one)")
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 2):
        raise ConfigError(f"{key}.rounds", rounds, "null (one forward per model per round) or an integer >= 2")
    return LatencySettings(options, paired, rounds)


def group_key(point: Point) -> tuple[Any, ...]:
    """What a comparison group shares (the device aside: one run has one): the points timed together."""
    return (point.backbone, point.input_size, point.batch_size, point.num_classes, point.dtype, point.channels_last)


def baseline_point(point: Point) -> Point:
    """The baseline (`none`) of `point`'s comparison group."""
    return make_point(point.backbone, "none", input_size=point.input_size, batch_size=point.batch_size,
                      num_classes=point.num_classes, dtype=point.dtype, channels_last=point.channels_last)


def for_point(options: LatencyOptions, device: str, point: Point, batch_size: int | None = None) -> LatencyOptions:
    """The full latency options of one point on `device` (at `batch_size` when an OOM retry lowered it)."""
    return dataclasses.replace(options, device=device, batch_size=point.batch_size if batch_size is None else batch_size,
                               dtype=point.dtype, channels_last=point.channels_last)


@register_measurement
class Latency(Measurement):
    """Median and spread of whole-model forwards at the point's batch, dtype and layout; paired within a group."""

    name = "latency"
    order = 20
    columns: ClassVar[tuple[Column, ...]] = (*_STATISTICS, BATCH_USED, *_OPTIONS, METHOD, CHANGE, CHANGE_LOW, CHANGE_HIGH,
                                             AA_CHANGE, AA_LOW, AA_HIGH, ROUNDS, ROUND_MEDIANS, PAIRED_WITH, GROUP_SIZE)

    def __init__(self) -> None:
        self.warmed: set[LatencyOptions] = set()  # configurations already timed once in this process

    def parse(self, value: Any, key: str) -> LatencySettings | None:
        return latency_settings(value, key)

    def check(self, settings: LatencySettings, points: tuple[Point, ...], device: str) -> None:
        for point in sorted({(p.batch_size, p.dtype, p.channels_last): p for p in points}.values(), key=str):
            try:
                for_point(settings.options, device, point).validate()
            except ConfigError as error:
                raise (error.under("measure.latency") if error.key not in ("dtype", "device") else error) from None

    def grouped(self, settings: LatencySettings) -> bool:
        return settings.paired

    def run(self, run: PointRun, settings: LatencySettings) -> dict[str, Any]:
        """One point on its own (sequential timing)."""
        sample = run.point.input_shape[1:]

        def timed(batch: int) -> LatencyResult:
            options = for_point(settings.options, run.device, run.point, batch)
            if options not in self.warmed:
                # The first timing of a configuration in a process reads 10-40 % slow on CPU (allocator and
                # kernel caches still growing) and baselines run first, so one full measurement is thrown away.
                measure_latency(run.model, sample, options)
                self.warmed.add(options)
            return measure_latency(run.model, sample, options)

        timing, batch = with_memory(timed, run.point.batch_size, run.shared.floor_for(run.point.batch_size))
        run.results[self.name] = (timing, batch)
        row = _timing_row(timing, batch)
        row[METHOD.key] = "sequential"
        return row

    def run_group(self, runs: Sequence[PointRun], settings: LatencySettings) -> list[dict[str, Any] | BaseException]:
        """The points of one comparison group timed together, in interleaved rounds with their baseline and its A/A copy.

        A point whose model cannot be built fails alone; without its baseline among the points, the
        group's baseline is built to time against (its row is not this run's to write).
        """
        out: list[dict[str, Any] | BaseException] = [{} for _ in runs]
        models: dict[str, Any] = {}
        for index, run in enumerate(runs):
            try:
                models[run.point.key] = run.model
            except Exception as error:  # noqa: BLE001 - the point fails, the group goes on
                out[index] = error
        if not models:
            return out
        first = next(run for run in runs if run.point.key in models)
        base = next((run.point for run in runs if run.point.key in models and run.point.attention == "none"), None)
        if base is None:
            base = baseline_point(first.point)
            models[base.key] = build_point_model(base)
        sample = first.point.input_shape[1:]
        paired = dataclasses.replace(rounds_for(settings.options, settings.rounds), aa=True)

        def timed(batch: int) -> PairedResult:
            options = for_point(settings.options, first.device, first.point, batch)
            return measure_paired(models, base.key, sample, options, paired)

        result, batch = with_memory(timed, first.point.batch_size, first.shared.floor_for(first.point.batch_size))
        for index, run in enumerate(runs):
            if run.point.key not in models:
                continue
            timing = result.members[run.point.key]
            run.results[self.name] = (timing, batch)
            row = _timing_row(timing, batch)
            row.update({METHOD.key: "paired", ROUNDS.key: result.rounds, PAIRED_WITH.key: base.key,
                        GROUP_SIZE.key: len(result.members),
                        ROUND_MEDIANS.key: [round(v, 6) for v in result.per_round_ms[run.point.key]]})
            if run.point.key == base.key:
                row.update(_change_row(result.changes[AA], (AA_CHANGE, AA_LOW, AA_HIGH)))
            else:
                row.update(_change_row(result.changes[run.point.key], (CHANGE, CHANGE_LOW, CHANGE_HIGH)))
            out[index] = row
        return out


def _timing_row(timing: LatencyResult, batch: int) -> dict[str, Any]:
    row = {column.key: getattr(timing, field) for column, field in _STATISTICS.items()}
    row.update({column.key: getattr(timing.options, field) for column, field in _OPTIONS.items()})
    row[BATCH_USED.key] = batch
    return row


def _change_row(change: Change, columns: tuple[Column, Column, Column]) -> dict[str, float]:
    value, low, high = columns
    return {value.key: change.pct, low.key: change.ci_low_pct, high.key: change.ci_high_pct}
