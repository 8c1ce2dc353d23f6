"""A short training run per point (the `train:` section), several seeds, top-1 summarised (attnbench.train).

    train:
      data: {dataset: digits, image_size: 32}    # attnbench.train.DataSpec fields
      seeds: [0, 1, 2]
      epochs: 4                   # and any other attnbench.train.TrainConfig field
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from attnbench.config.point import Point
from attnbench.core.checks import check_int_list
from attnbench.core.errors import ConfigError, check_keys
from attnbench.run.columns import Column, column
from attnbench.run.measurements.base import Measurement, PointRun, build_point_model
from attnbench.run.measurements.registry import register_measurement
from attnbench.run.settings import construct
from attnbench.train import DataSpec, LoadedData, TrainConfig, load_dataset, summarize, train_model

TOP1_STD = column("top1_std", "top-1 std (%)", "%")
TOP1 = column("top1_mean", "Top-1 (%)", "%", "higher", "pp", latex=r"Top-1 (\%)", spread=TOP1_STD.key)
TOP1_CI = column("top1_ci95", "top-1 95% half-width (%)", "%")
TOP1_SEEDS = column("top1_seeds", "top-1 per seed (%)", "%")
TRAIN_SEEDS = column("train_seeds", "seeds trained", "seed values")  # in top1_seeds' order: pairs runs by seed
TOP5 = column("top5_mean", "Top-5 (%)", "%", "higher", "pp")
SEEDS = column("seeds", "seeds", "count")
EPOCHS = column("epochs", "epochs", "count")
TRAIN_SECONDS = column("train_seconds", "training time (s)", "s")
TRAIN_THROUGHPUT = column("train_images_per_s", "training images/s", "images/s", "higher", "pct")
CURVES = column("train_curves", "per-epoch records", "records")


@dataclass(frozen=True)
class TrainSettings:
    """Data, loop configuration and seeds of the short training run after measuring."""

    data: DataSpec = field(default_factory=DataSpec)
    config: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = (0, 1, 2)


@functools.lru_cache(maxsize=2)
def training_data(spec: DataSpec) -> LoadedData:
    """The dataset a DataSpec names, loaded once per process."""
    return load_dataset(spec)


@register_measurement
class Training(Measurement):
    """A fresh model per seed through attnbench.train.train_model; a diverged seed fails the point."""

    name = "training"
    section = "train"
    order = 90
    needs_weights = False  # builds its own model per seed
    columns: ClassVar[tuple[Column, ...]] = (TOP1, TOP1_STD, TOP1_CI, TOP1_SEEDS, TRAIN_SEEDS, TOP5, SEEDS, EPOCHS, TRAIN_SECONDS,
                                             TRAIN_THROUGHPUT, CURVES)

    def parse(self, value: Any, key: str) -> TrainSettings | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ConfigError(key, value, "a mapping of training options")
        section = dict(value)
        data = section.pop("data", {}) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{key}.data", data, "a mapping of data options (dataset, image_size, data_dir, ...)")
        seeds = check_int_list(f"{key}.seeds", section.pop("seeds", [0, 1, 2]), 0, "a non-empty list of integers >= 0")
        allowed = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed"]
        check_keys(section, tuple(allowed) + ("seeds", "data"), f"{key}.")
        return TrainSettings(construct(DataSpec, data, f"{key}.data."), construct(TrainConfig, section, f"{key}."),
                             tuple(seeds))

    def check(self, settings: TrainSettings, points: tuple[Point, ...], device: str) -> None:
        """Points must take the data's images and classes; loading now also checks paths and splits."""
        try:
            info = training_data(settings.data).info
        except ConfigError as error:  # a path or split the files do not support: name it where the file set it
            raise error.under("train.data") from None
        for point in points:
            if point.input_size != info.image_size:
                raise ConfigError("train.data.image_size", info.image_size,
                                  f"equal to the points' input_size {point.input_size} ({point.backbone})")
            if point.num_classes != info.num_classes:
                raise ConfigError("num_classes", point.num_classes, f"{info.num_classes}, the classes of {info.dataset}")

    def run(self, run: PointRun, settings: TrainSettings) -> dict[str, Any]:
        data = training_data(settings.data)
        top1: list[float] = []
        top5: list[float] = []
        curves: list[list[dict[str, Any]]] = []
        seconds = images_per_s = 0.0
        for index, seed in enumerate(settings.seeds):
            model = build_point_model(run.point, seed)
            config = dataclasses.replace(settings.config, seed=seed)
            callback = None if run.on_epoch is None else functools.partial(run.on_epoch, index)
            result = train_model(model, data, config, run.device, on_epoch=callback)
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
            TOP1.key: summary.mean, TOP1_STD.key: summary.std, TOP1_CI.key: (summary.ci_high - summary.ci_low) / 2,
            TOP1_SEEDS.key: top1, TRAIN_SEEDS.key: list(settings.seeds), SEEDS.key: len(top1),
            EPOCHS.key: settings.config.epochs,
            TRAIN_SECONDS.key: seconds, TRAIN_THROUGHPUT.key: images_per_s / len(settings.seeds), CURVES.key: curves,
        }
        if top5:
            row[TOP5.key] = sum(top5) / len(top5)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
