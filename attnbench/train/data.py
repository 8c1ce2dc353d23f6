"""Datasets for short training runs: scikit-learn digits, CIFAR-10/100, image folders, synthetic tensors.

`load_dataset(spec)` returns (train, val, info). Splits that fit in memory are
`TensorSplit`s, moved whole to the training device so that batching and
augmentation (`augment.py`) run there; large image folders are `StreamSplit`s
read by DataLoader workers. Both hand out raw batches (uint8, or floats in
[0, 1]); normalisation with `info.mean` / `info.std` happens on the device.

The shared types and helpers live in `datasets.py`, image decoding and `StreamSplit` in
`image_files.py`, the CIFAR reader in `cifar.py` and the image-folder loader in
`image_folder.py`; this module keeps the entry points, the digits and synthetic sets, and
re-exports every name it always offered.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.train.cifar import _CIFAR_CLASSES as _CIFAR_CLASSES
from attnbench.train.cifar import _CIFAR_LAYOUT as _CIFAR_LAYOUT
from attnbench.train.cifar import _cifar, _cifar_folder
from attnbench.train.cifar import _download_cifar as _download_cifar
from attnbench.train.cifar import _read_cifar_files as _read_cifar_files
from attnbench.train.cifar import _read_cifar_pickle as _read_cifar_pickle
from attnbench.train.cifar import _resize as _resize
from attnbench.train.datasets import (
    DATASETS,
    DEFAULT_VAL_FRACTION,
    DataInfo,
    DataSpec,
    LoadedData,
    TensorSplit,
    _augment_spec,
    _Raw,
    _stratified_split,
    channel_stats,
)
from attnbench.train.datasets import _check_val_split as _check_val_split
from attnbench.train.image_files import MAX_IMAGE_PIXELS, ImageFileError, ImageFiles, StreamSplit
from attnbench.train.image_files import _decoded as _decoded
from attnbench.train.image_files import _open_image as _open_image
from attnbench.train.image_folder import IMAGE_SUFFIXES, STATS_SAMPLE, _image_folder_samples, _load_image_folder
from attnbench.train.image_folder import _check_headers as _check_headers
from attnbench.train.image_folder import _class_samples as _class_samples
from attnbench.train.image_folder import _decode_all as _decode_all

__all__ = ["DATASETS", "DEFAULT_VAL_FRACTION", "IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "STATS_SAMPLE", "DataInfo", "DataSpec",
           "ImageFileError", "ImageFiles", "LoadedData", "StreamSplit", "TensorSplit", "channel_stats", "check_dataset",
           "load_dataset"]


def load_dataset(spec: DataSpec) -> LoadedData:
    """Load, split and describe the dataset `spec` names (on the CPU; `train_model` moves it)."""
    if spec.dataset == "imagefolder":
        return _load_image_folder(spec)
    loaders = {"digits": _digits, "cifar10": _cifar, "cifar100": _cifar, "synthetic": _synthetic}
    raw = loaders[spec.dataset](spec)
    train, val = _split(raw, spec)
    mean, std = channel_stats(train.images)
    info = DataInfo(spec.dataset, len(raw.classes), raw.classes, spec.image_size, mean, std,
                    len(train), len(val), True, _augment_spec(spec))
    return LoadedData(train, val, info)


def check_dataset(spec: DataSpec) -> None:
    """Check, without loading, that the files `spec` names are where it says (ConfigError if not)."""
    if spec.dataset in ("cifar10", "cifar100"):
        _cifar_folder(spec)
    elif spec.dataset == "imagefolder":
        _image_folder_samples(spec)


def _split(raw: _Raw, spec: DataSpec) -> tuple[TensorSplit, TensorSplit]:
    if spec.val_split is None and raw.val_images is not None and raw.val_labels is not None:
        return TensorSplit(raw.images, raw.labels), TensorSplit(raw.val_images, raw.val_labels)
    val_split = DEFAULT_VAL_FRACTION if spec.val_split is None else spec.val_split
    train, val = _stratified_split(raw.labels.numpy(), val_split, spec.seed)
    train_index, val_index = torch.from_numpy(train), torch.from_numpy(val)
    return (TensorSplit(raw.images[train_index], raw.labels[train_index]),
            TensorSplit(raw.images[val_index], raw.labels[val_index]))


def _digits(spec: DataSpec) -> _Raw:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # 8x8, values 0..16
    images = F.interpolate(pixels, size=(spec.image_size,) * 2, mode="bilinear", align_corners=False)
    return _Raw(images.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target).long(),
                tuple(str(name) for name in digits.target_names))


def _synthetic(spec: DataSpec) -> _Raw:
    generator = torch.Generator().manual_seed(spec.seed)
    n, size = spec.synthetic_samples, spec.image_size
    images = torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    # Balanced (every class about n / classes times), in random order, so any split can be stratified.
    labels = (torch.arange(n) % spec.num_classes)[torch.randperm(n, generator=generator)]
    return _Raw(images, labels, tuple(str(i) for i in range(spec.num_classes)))
