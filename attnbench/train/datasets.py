"""What every dataset loader shares: the spec, the description, the splits, and the split/stats helpers.

`DataSpec` names the data and is validated on construction; `DataInfo` describes a loaded
set; `TensorSplit` holds a split in memory (`StreamSplit`, for files, lives in
`image_files.py`) and `LoadedData` bundles (train, val, info). `_Raw` is a set before
splitting. `channel_stats`, `_stratified_split` and `_augment_spec` are used by the loaders
in `data.py`, `cifar.py` and `image_folder.py` alike; `attnbench.train.data` re-exports all of it.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from attnbench.core.checks import check_int
from attnbench.core.errors import ConfigError
from attnbench.train.augment import AugmentSpec
from attnbench.train.image_files import StreamSplit

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")
DEFAULT_VAL_FRACTION = 0.2  # for sets that ship without a validation split


@dataclass(frozen=True)
class DataSpec:
    """Which data to train on and how to prepare it; pure fields are validated on construction."""

    dataset: str = "digits"
    data_dir: str | None = None  # cifar10 / cifar100 / imagefolder
    image_size: int = 32
    val_split: float | int | None = None  # fraction or count held out of train; None: the set's own split
    seed: int = 0  # split and synthetic content
    download: bool = False  # cifar only, through torchvision when it imports
    augment: bool = True
    crop_padding: int | None = None  # None: image_size // 8 (4 pixels at 32, the CIFAR convention)
    hflip: bool | None = None  # None: on, except for digits (a mirrored digit is another glyph or none)
    synthetic_samples: int = 1280
    num_classes: int = 10  # synthetic only; the other sets know theirs
    max_in_memory_mb: float = 2048.0  # image folders larger than this (uint8 at image_size) are streamed
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError("dataset", self.dataset, "one of " + ", ".join(DATASETS))
        check_int("image_size", self.image_size, 8, allowed="an integer >= 8")
        _check_val_split(self.val_split)
        check_int("seed", self.seed, 0, allowed="an integer >= 0")
        if self.crop_padding is not None:
            check_int("crop_padding", self.crop_padding, 0, allowed="None or an integer >= 0")
            if self.crop_padding >= self.image_size:
                raise ConfigError("crop_padding", self.crop_padding, f"None or an integer in [0, image_size={self.image_size})")
        check_int("synthetic_samples", self.synthetic_samples, 2, allowed="an integer >= 2")
        check_int("num_classes", self.num_classes, 2, allowed="an integer >= 2")
        check_int("num_workers", self.num_workers, 0, allowed="an integer >= 0")
        for key in ("download", "augment", "hflip"):
            value = getattr(self, key)
            if not isinstance(value, bool) and not (key == "hflip" and value is None):
                raise ConfigError(key, value, "true or false" + (" or None" if key == "hflip" else ""))
        if isinstance(self.max_in_memory_mb, bool) or not isinstance(self.max_in_memory_mb, (int, float)) \
                or not self.max_in_memory_mb >= 0:
            raise ConfigError("max_in_memory_mb", self.max_in_memory_mb, "a number >= 0")
        if self.dataset in ("cifar10", "cifar100", "imagefolder") and not self.data_dir:
            raise ConfigError("data_dir", self.data_dir, f"a folder path (required for dataset {self.dataset})")


@dataclass(frozen=True)
class DataInfo:
    """What the training loop needs to know about a loaded dataset."""

    dataset: str
    num_classes: int
    classes: tuple[str, ...]
    image_size: int
    mean: tuple[float, ...]  # per channel, pixels in [0, 1], over the training split
    std: tuple[float, ...]
    train_size: int
    val_size: int
    in_memory: bool
    augment: AugmentSpec | None
    channels: int = 3


class TensorSplit:
    """A split held as tensors: images N×C×H×W (uint8, or floats in [0, 1]) and int64 labels."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.images.device

    def to(self, device: torch.device | str) -> TensorSplit:
        """The split on `device` (itself when already there)."""
        if self.images.device == torch.device(device):
            return self
        return TensorSplit(self.images.to(device), self.labels.to(device))

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches in a random order drawn from `generator`, or in stored order when it is None."""
        n = len(self)
        order = None if generator is None else torch.randperm(n, generator=generator, device=self.images.device)
        for start in range(0, n, batch_size):
            index = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
            yield self.images[index], self.labels[index]


class LoadedData(NamedTuple):
    """(train, val, info), as `load_dataset` returns it and `train_model` takes it."""

    train: TensorSplit | StreamSplit
    val: TensorSplit | StreamSplit
    info: DataInfo


@dataclass
class _Raw:
    """A dataset before splitting: uint8 or [0, 1] float images, labels, and its own validation part if any."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    val_images: Tensor | None = None
    val_labels: Tensor | None = None


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of pixel values in [0, 1], in float64, chunk by chunk."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].double().transpose(0, 1).flatten(1)
        total += part.sum(1)
        squares += part.square().sum(1)
    count = images.shape[0] * images.shape[2] * images.shape[3]
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple((mean / scale).tolist()), tuple((std / scale).tolist())


def _augment_spec(spec: DataSpec) -> AugmentSpec | None:
    if not spec.augment:
        return None
    hflip = spec.dataset != "digits" if spec.hflip is None else spec.hflip
    padding = spec.image_size // 8 if spec.crop_padding is None else spec.crop_padding
    return AugmentSpec(padding, hflip)


def _check_val_split(value: Any) -> None:
    allowed = "None, a fraction in (0, 1), or a count >= 1"
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("val_split", value, allowed)
    if isinstance(value, float) and not 0 < value < 1:
        raise ConfigError("val_split", value, allowed)
    if isinstance(value, int) and value < 1:
        raise ConfigError("val_split", value, allowed)


def _stratified_split(labels: np.ndarray, val_split: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with class proportions kept (sorted, so stored order is kept too)."""
    from sklearn.model_selection import train_test_split

    try:
        train, val = train_test_split(np.arange(len(labels)), test_size=val_split, stratify=labels, random_state=seed)
    except ValueError as error:
        classes = len(np.unique(labels))
        raise ConfigError("val_split", val_split, f"a split that leaves each of the {classes} classes in both "
                          f"parts of the {len(labels)} training samples ({error})") from None
    return np.sort(train), np.sort(val)
