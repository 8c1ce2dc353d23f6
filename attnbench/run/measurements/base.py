"""The measurement plugin interface: each measurement owns its settings section, its step and its columns.

A measurement says which part of an ablation file configures it (`measure.<name>`, the top-level
`train:` section, or nothing when it always runs), turns that part into settings (None: off),
checks them against the points and the machine before anything runs, and measures one point,
returning the row entries of the columns it declares. The runner loops over the enabled ones in
`order`; adding a measurement is one file in this package. A measurement that compares points
(paired latency) may measure a whole comparison group at once (`grouped`, `run_group`): the grid
then hands the runner each group together (attnbench.run.runner.run_group).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from attnbench.backbones import build_model
from attnbench.config.point import Point
from attnbench.run.columns import Column
from attnbench.train import EpochRecord

EpochCallback = Callable[[int, EpochRecord], None]  # (seed index, record)
Section = Literal["always", "measure", "train", "flag"]


@dataclass(frozen=True)
class Shared:
    """Settings every batch-bound measurement shares: the out-of-memory policy (`measure.oom_floor`, `oom_retry`)."""

    oom_floor: int = 1
    oom_retry: bool = True  # false: an out-of-memory point fails at its own batch instead of being retried at half

    def floor_for(self, batch_size: int) -> int:
        """The smallest batch an out-of-memory retry may go down to for a point of `batch_size`."""
        return min(self.oom_floor, batch_size) if self.oom_retry else batch_size


def build_point_model(point: Point, seed: int = 0) -> nn.Module:
    """The model a point describes, freshly initialised from `seed`."""
    torch.manual_seed(seed)
    return build_model(
        point.backbone, point.attention, stages=point.stages, position=point.position, blocks=point.blocks,
        num_classes=point.num_classes, input_size=point.input_size, **point.hyperparameters,
    )


@dataclass
class PointRun:
    """What the measurements of one point share: the point, where it runs, its model (built once), earlier results."""

    point: Point
    device: str
    shared: Shared = field(default_factory=Shared)
    on_epoch: EpochCallback | None = None
    results: dict[str, Any] = field(default_factory=dict)  # measurement name -> its result object, for later steps
    needs_weights: bool = True  # whether a measurement of this run reads `model` (false: `counting_model` is cheap)

    @functools.cached_property
    def model(self) -> nn.Module:
        """The point's model, seeded, built on first use and shared by the measurements that only read it."""
        return build_point_model(self.point)

    @functools.cached_property
    def counting_model(self) -> nn.Module:
        """A model to count: `model` where one is needed anyway, else the same model without its weights' values.

        Built on the meta device and given uninitialised CPU memory (`to_empty`): no random
        initialisation, which is most of building a ResNet-50. Counts read shapes only
        (attnbench.measure.complexity.count_shapes_only); where values could matter, `model` is counted.
        """
        if self.needs_weights or "model" in self.__dict__:
            return self.model
        try:
            with torch.device("meta"):
                model = build_point_model(self.point)
            return model.to_empty(device="cpu")
        except Exception:  # a module that cannot be built on the meta device: build it for real
            return self.model


class Measurement:
    """Base of a measurement plugin; subclasses set the class attributes and override `parse`, `check`, `run`."""

    name: ClassVar[str]  # its name, and its key under `measure:` (section "measure") unless `reads` says another
    section: ClassVar[Section] = "measure"
    reads: ClassVar[str | None] = None  # the `measure:` key it is configured by, where not its own name
    order: ClassVar[int] = 50  # the runner runs measurements by increasing order
    needs_weights: ClassVar[bool] = True  # whether it reads `PointRun.model` (initialised weights)
    columns: ClassVar[tuple[Column, ...]] = ()

    @property
    def key(self) -> str:
        """The `measure:` key (or section name) this measurement is configured by."""
        return self.reads or self.name

    def parse(self, value: Any, key: str) -> Any | None:
        """Settings from the file's value for this measurement (`key` names it in errors); None: switched off."""
        return value or None

    def check(self, settings: Any, points: tuple[Point, ...], device: str) -> None:
        """Raise ConfigError for settings this machine or these points cannot honour, before anything runs."""

    def run(self, run: PointRun, settings: Any) -> dict[str, Any]:
        """Measure one point; the row entries of this measurement's columns."""
        raise NotImplementedError

    def grouped(self, settings: Any) -> bool:
        """Whether a grid measures the points of one comparison group together (`run_group`) under `settings`."""
        return False

    def run_group(self, runs: Sequence[PointRun], settings: Any) -> list[dict[str, Any] | BaseException]:
        """Measure the points of one comparison group together: each one's row entries, or the error it failed with."""
        raise NotImplementedError
