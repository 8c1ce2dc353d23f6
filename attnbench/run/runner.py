"""One point in, one result row out: build the model, run the selected measurements, return flat values.

Complexity always runs; latency (whole model and each module alone at its slot's shape),
memory, profiles and the short training run follow the grid's settings. Keys of the row:
complexity's own (`params`, `macs`, `flops`, `by_slot/...`), `latency_median_ms` and spread, `throughput_ips`,
`slot/<name>/...`, `memory_*`, `env/...`, and for training `top1_*`, `top5_mean`, `train_*`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from attnbench.backbones import build_model
from attnbench.errors import ConfigError
from attnbench.measure.complexity import measure_complexity
from attnbench.measure.environment import environment_record
from attnbench.measure.latency import LatencyOptions, LatencyResult, measure_latency
from attnbench.measure.memory import MemoryResult, measure_memory, with_oom_retry
from attnbench.measure.profile import profile_model
from attnbench.measure.roofline import device_peaks, minimum_bytes, roofline
from attnbench.measure.slot_shapes import measure_slots
from attnbench.config.settings import LatencySettings, MeasureSettings, TrainSettings, parse_measure, parse_train
from attnbench.config.point import Point
from attnbench.train import EpochRecord, LoadedData, load_dataset, summarize, train_model

DEVICES = ("cpu", "cuda", "auto")
_WARMED: set[LatencyOptions] = set()  # configurations already timed once in this process
EpochCallback = Callable[[int, EpochRecord], None]  # (seed index, record)
T = TypeVar("T")


@dataclass(frozen=True)
class RunOptions:
    """What to measure for every point, and where."""

    device: str = "auto"
    measure: MeasureSettings = dataclasses.field(default_factory=MeasureSettings)
    train: TrainSettings | None = None
    profile_dir: Path | None = None  # torch.profiler traces per point, when set

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
        latency = self.measure.latency or LatencySettings()  # dtype and device are checked even without timing
        for batch_size, dtype, channels_last in sorted({(p.batch_size, p.dtype, p.channels_last) for p in points}):
            try:
                latency.for_point(device, batch_size, dtype, channels_last).validate()
            except ConfigError as error:
                raise (error.under("measure.latency") if error.key not in ("dtype", "device") else error) from None
        if self.train is not None:
            _check_trainable(points, self.train)
        return self


def _check_trainable(points: tuple[Point, ...], train: TrainSettings) -> None:
    """Points must take the data's images and classes; loading now also checks paths and splits."""
    try:
        info = training_data(train.data).info
    except ConfigError as error:  # a path or split the files do not support: name it where the file set it
        raise error.under("train.data") from None
    for point in points:
        if point.input_size != info.image_size:
            raise ConfigError("train.data.image_size", info.image_size,
                              f"equal to the points' input_size {point.input_size} ({point.backbone})")
        if point.num_classes != info.num_classes:
            raise ConfigError("num_classes", point.num_classes, f"{info.num_classes}, the classes of {info.dataset}")


@functools.lru_cache(maxsize=2)
def training_data(spec: Any) -> LoadedData:
    """The dataset a DataSpec names, loaded once per process."""
    return load_dataset(spec)


@functools.lru_cache(maxsize=2)
def _environment(device: str) -> dict[str, Any]:
    return environment_record(device)


def build_point_model(point: Point) -> nn.Module:
    """The model a point describes, freshly initialised."""
    return build_model(
        point.backbone, point.attention, stages=point.stages, position=point.position, blocks=point.blocks,
        num_classes=point.num_classes, input_size=point.input_size, **point.hyperparameters,
    )


def run_point(point: Point, options: RunOptions, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Measure one point; raises on failure (the grid records the error and goes on)."""
    started = time.perf_counter()
    device = options.resolved_device()
    torch.manual_seed(0)
    model = build_point_model(point)
    complexity = measure_complexity(model, (1, *point.input_shape[1:]))
    row: dict[str, Any] = complexity.to_dict()
    row["uncounted_ops"] = ", ".join(complexity.uncounted_ops)
    row["device"] = device
    row.update({f"env/{key}": value for key, value in _flat(_environment(device)).items()})
    sample_shape = point.input_shape[1:]
    if options.measure.latency is not None:
        row.update(_latency(model, point, options, device, complexity.by_slot))
    if options.measure.memory:
        row.update(_memory(model, point, options, device))
    if options.profile_dir is not None:
        traces = profile_model(model, sample_shape, options.profile_dir / point.key, device,
                               batch_size=point.batch_size, dtype=point.dtype, worker_name=point.key)
        row["profile_traces"] = ", ".join(str(t) for t in traces)
    if options.train is not None:
        row.update(_train(point, options.train, device, on_epoch))
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def _latency(model: nn.Module, point: Point, options: RunOptions, device: str, by_slot: dict[str, Any]) -> dict[str, Any]:
    """Whole-model latency with OOM retry, then each module alone at its slot's shape with rooflines."""
    settings = options.measure.latency
    assert settings is not None
    sample = point.input_shape[1:]

    def timed(batch: int) -> LatencyResult:
        latency_options = settings.for_point(device, batch, point.dtype, point.channels_last)
        if latency_options not in _WARMED:
            # The first timing of a configuration in a process reads 10-40 % slow on CPU (allocator and
            # kernel caches still growing) and baselines run first, so one full measurement is thrown away.
            measure_latency(model, sample, latency_options)
            _WARMED.add(latency_options)
        return measure_latency(model, sample, latency_options)

    timing, batch = _with_memory(timed, point.batch_size, options.measure.floor_for(point.batch_size))
    result = timing.to_dict()
    row = {f"latency_{k}": result[k] for k in ("median_ms", "iqr_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "samples")}
    row.update(throughput_ips=result["throughput_ips"], threads=result["threads"], batch_size_used=batch,
               compile=result["compile"], compile_mode=result["compile_mode"], cuda_graphs=result["cuda_graphs"],
               cold_l2=result["cold_l2"])
    if not settings.slots:
        return row
    slot_results = measure_slots(model, sample, timing.options)
    peaks = device_peaks(torch.cuda.get_device_name(), point.dtype) if device == "cuda" else None
    modules = dict(model.named_modules())
    total = 0.0
    for name, slot_timing in slot_results.items():
        total += slot_timing.median_ms
        prefix = f"slot/{name}/"
        row[prefix + "shape"] = "x".join(map(str, slot_timing.input_shape))
        row[prefix + "latency_ms"] = slot_timing.median_ms
        row[prefix + "latency_iqr_ms"] = slot_timing.iqr_ms
        if peaks is not None and name in by_slot:
            flops = 2 * by_slot[name]["macs"] + by_slot[name]["elementwise_flops"]
            moved = minimum_bytes(modules[name], slot_timing.input_shape, point.dtype, batch)
            line = roofline(batch * flops, moved, slot_timing.median_ms / 1e3, peaks)
            row.update({prefix + k: line[k] for k in ("bound", "bandwidth_fraction", "compute_fraction", "roofline_fraction")})
    row["attention_latency_ms"] = total
    return row


def _memory(model: nn.Module, point: Point, options: RunOptions, device: str) -> dict[str, Any]:
    """Peak memory of inference and of one training step, halving the batch on OOM."""

    def measured(batch: int) -> MemoryResult:
        return measure_memory(model, point.input_shape[1:], device, point.dtype, batch, point.channels_last)

    result, batch = _with_memory(measured, point.batch_size, options.measure.floor_for(point.batch_size))
    return {f"memory_{k}": v for k, v in result.to_dict().items() if k not in ("device", "dtype")} | {
        "memory_batch_size_used": batch}


def _with_memory(measure: Callable[[int], T], batch_size: int, floor: int) -> tuple[T, int]:
    """`measure(batch)` halving the batch on out-of-memory; below `floor` the point fails as OOM."""
    attempt = with_oom_retry(measure, batch_size, floor)
    if attempt.oom:
        raise MemoryError(f"out of memory down to batch {attempt.batch_size}: {attempt.error}")
    return attempt.value, attempt.batch_size


def _train(point: Point, train: TrainSettings, device: str, on_epoch: EpochCallback | None) -> dict[str, Any]:
    """Train a fresh model per seed; summarise final top-1 over seeds. A diverged seed fails the point."""
    data = training_data(train.data)
    top1: list[float] = []
    top5: list[float] = []
    curves: list[list[dict[str, Any]]] = []
    seconds = images_per_s = 0.0
    for index, seed in enumerate(train.seeds):
        torch.manual_seed(seed)
        model = build_point_model(point)
        config = dataclasses.replace(train.config, seed=seed)
        callback = None if on_epoch is None else functools.partial(on_epoch, index)
        result = train_model(model, data, config, device, on_epoch=callback)
        if result.failed:
            raise FloatingPointError(f"seed {seed}: {result.error}")
        last = result.epochs[-1]
        top1.append(last.val_top1)
        if last.val_top5 is not None:
            top5.append(last.val_top5)
        curves.append([record.as_dict() for record in result.epochs])
        seconds += result.total_time_s
        images_per_s += sum(r.images_per_s for r in result.epochs) / len(result.epochs)
    summary = summarize(top1)
    row = {
        "top1_mean": summary.mean, "top1_std": summary.std, "top1_ci95": (summary.ci_high - summary.ci_low) / 2,
        "top1_seeds": top1, "seeds": len(top1), "epochs": train.config.epochs,
        "train_seconds": seconds, "train_images_per_s": images_per_s / len(train.seeds), "train_curves": curves,
    }
    if top5:
        row["top5_mean"] = sum(top5) / len(top5)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as `a/b` keys."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def options_for(ablation: Any, device: str = "auto", profile_dir: Path | None = None) -> RunOptions:
    """Run options from an ablation's `measure:` and `train:` sections, checked against its points and this machine."""
    options = RunOptions(device, parse_measure(ablation.measure), parse_train(ablation.train), profile_dir)
    return options.validate(ablation.points)
