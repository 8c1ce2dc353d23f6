"""Typed settings for an ablation file's `measure:` and `train:` sections, validated with prefixed keys.

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
        slots: true               # also time each module alone at every slot's shape
      memory: false               # peak memory of inference and of one training step
      oom_floor: 1                # halve the batch on OOM down to this, then record the point as OOM
      oom_retry: true             # false: no halving, an OOM point fails at its own batch
    train:
      data: {dataset: digits, image_size: 32}    # attnbench.train.DataSpec fields
      seeds: [0, 1, 2]
      epochs: 4                   # and any other attnbench.train.TrainConfig field
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from attnbench.errors import ConfigError, check_keys
from attnbench.hparams import as_float
from attnbench.measure.latency import LatencyOptions
from attnbench.train import DataSpec, TrainConfig

LATENCY_KEYS = ("warmup", "repeats", "min_time_s", "threads", "compile", "compile_mode", "cuda_graphs", "cold_l2", "slots")
MEASURE_KEYS = ("latency", "memory", "oom_floor", "oom_retry")


@dataclass(frozen=True)
class LatencySettings:
    """How every point of a grid is timed (the per-point axes — batch, dtype, layout — live on the points)."""

    options: LatencyOptions = field(default_factory=LatencyOptions)
    slots: bool = True

    def for_point(self, device: str, batch_size: int, dtype: str, channels_last: bool) -> LatencyOptions:
        """The full latency options of one point on `device`."""
        return dataclasses.replace(self.options, device=device, batch_size=batch_size, dtype=dtype, channels_last=channels_last)


@dataclass(frozen=True)
class MeasureSettings:
    """Which measurements run beyond complexity (always on)."""

    latency: LatencySettings | None = None
    memory: bool = False
    oom_floor: int = 1
    oom_retry: bool = True  # false: an out-of-memory point fails at its own batch instead of being retried at half

    def floor_for(self, batch_size: int) -> int:
        """The smallest batch an out-of-memory retry may go down to for a point of `batch_size`."""
        return min(self.oom_floor, batch_size) if self.oom_retry else batch_size


@dataclass(frozen=True)
class TrainSettings:
    """Data, loop configuration and seeds of the short training run after measuring."""

    data: DataSpec = field(default_factory=DataSpec)
    config: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = (0, 1, 2)


def parse_measure(section: dict[str, Any] | None) -> MeasureSettings:
    """`measure:` of an ablation file; ConfigError keys start with `measure.`."""
    section = dict(section or {})
    check_keys(section, MEASURE_KEYS, "measure.")
    latency = section.get("latency", False)
    if latency is True:
        latency = {}
    if latency is not False and latency is not None and not isinstance(latency, dict):
        raise ConfigError("measure.latency", latency, "true, false, or a mapping of " + ", ".join(LATENCY_KEYS))
    latency_settings = None
    if isinstance(latency, dict):
        check_keys(latency, LATENCY_KEYS, "measure.latency.")
        slots = latency.pop("slots", True)
        if not isinstance(slots, bool):
            raise ConfigError("measure.latency.slots", slots, "true or false")
        options = _construct(LatencyOptions, latency, "measure.latency.")
        try:  # device-independent checks now; the device is checked when the grid starts
            dataclasses.replace(options, cuda_graphs=False, cold_l2=False).validate()
        except ConfigError as error:
            raise error.under("measure.latency") from None
        latency_settings = LatencySettings(options, slots)
    memory = section.get("memory", False)
    if not isinstance(memory, bool):
        raise ConfigError("measure.memory", memory, "true or false")
    floor = section.get("oom_floor", 1)
    if isinstance(floor, bool) or not isinstance(floor, int) or floor < 1:
        raise ConfigError("measure.oom_floor", floor, "a positive integer")
    retry = section.get("oom_retry", True)
    if not isinstance(retry, bool):
        raise ConfigError("measure.oom_retry", retry, "true (halve the batch on out-of-memory) or false (fail the point)")
    return MeasureSettings(latency_settings, memory, floor, retry)


def parse_train(section: dict[str, Any] | None) -> TrainSettings | None:
    """`train:` of an ablation file, or None; ConfigError keys start with `train.`."""
    if section is None:
        return None
    section = dict(section)
    data = section.pop("data", {}) or {}
    if not isinstance(data, dict):
        raise ConfigError("train.data", data, "a mapping of data options (dataset, image_size, data_dir, ...)")
    seeds = section.pop("seeds", [0, 1, 2])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError("train.seeds", seeds, "a non-empty list of integers >= 0")
    allowed = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed"]
    check_keys(section, tuple(allowed) + ("seeds", "data"), "train.")
    return TrainSettings(_construct(DataSpec, data, "train.data."), _construct(TrainConfig, section, "train."), tuple(seeds))


def _numbers_read(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Real-number fields as people write them: YAML reads `lr: 1e-3` (no dot) as the string "1e-3"."""
    numbers = {f.name for f in dataclasses.fields(cls) if "float" in str(f.type)}
    read = dict(values)
    for name in numbers & read.keys():
        if isinstance(read[name], str) and (number := as_float(read[name])) is not None:
            read[name] = number
    return read


def _construct(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Build a settings dataclass, naming unknown keys and invalid values under `prefix`."""
    names = [f.name for f in dataclasses.fields(cls)]
    check_keys(values, tuple(names), prefix)
    try:
        return cls(**_numbers_read(cls, values))  # DataSpec and TrainConfig validate on construction
    except ConfigError as error:
        raise error.under(prefix.rstrip(".")) from None
