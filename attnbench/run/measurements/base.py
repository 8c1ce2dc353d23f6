"""The measurement plugin interface: each measurement owns its settings section, its step and its columns.

A measurement says which part of an ablation file configures it (`measure.<name>`, the top-level
`train:` section, or nothing when it always runs), turns that part into settings (None: off),
checks them against the points and the machine before anything runs, and measures one point,
returning the row entries of the columns it declares. The runner loops over the enabled ones in
`order`; adding a measurement is one file in this package.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

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

    @functools.cached_property
    def model(self) -> nn.Module:
        """The point's model, seeded, built on first use and shared by the measurements that only read it."""
        return build_point_model(self.point)


class Measurement:
    """Base of a measurement plugin; subclasses set the class attributes and override `parse`, `check`, `run`."""

    name: ClassVar[str]  # its name, and its key under `measure:` (section "measure") unless `reads` says another
    section: ClassVar[Section] = "measure"
    reads: ClassVar[str | None] = None  # the `measure:` key it is configured by, where not its own name
    order: ClassVar[int] = 50  # the runner runs measurements by increasing order
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
