"""Image folders: class subfolders (with optional train/ and val/), held in memory or streamed.

`_image_folder_samples` lists the classes and their image files, and refuses a folder with
none; `_load_image_folder` splits them, then decodes them all into `TensorSplit`s when they
fit in `max_in_memory_mb`, or checks every header and hands out `StreamSplit`s, with
mean/std estimated from STATS_SAMPLE training images. A file PIL cannot decode is refused
as a ConfigError naming it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from attnbench.core.errors import ConfigError
from attnbench.train.datasets import (
    DEFAULT_VAL_FRACTION,
    DataInfo,
    DataSpec,
    LoadedData,
    TensorSplit,
    _augment_spec,
    _stratified_split,
    channel_stats,
)
from attnbench.train.image_files import ImageFileError, ImageFiles, StreamSplit, _open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
STATS_SAMPLE = 2048  # streamed sets estimate mean/std from this many training images


def _class_samples(folder: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    samples = []
    for label, name in enumerate(classes):
        class_folder = folder / name
        if class_folder.is_dir():
            samples += [(path, label) for path in sorted(class_folder.iterdir())
                        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")]
    return samples


def _image_folder_samples(spec: DataSpec) -> tuple[tuple[str, ...], list[tuple[Path, int]], list[tuple[Path, int]] | None]:
    """Class names, training samples, and the val/ folder's samples (None without one)."""
    assert spec.data_dir is not None  # DataSpec requires one for the datasets read from files
    root = Path(spec.data_dir)
    allowed = "a folder of class subfolders of images, or one with train/ and val/ folders of them"
    if not root.is_dir():
        raise ConfigError("data_dir", spec.data_dir, allowed + "; this one does not exist")
    has_val = (root / "train").is_dir() and (root / "val").is_dir()
    train_root = root / "train" if has_val else root
    classes = tuple(sorted(p.name for p in train_root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    train = _class_samples(train_root, classes)
    if not train:
        raise ConfigError("data_dir", spec.data_dir, allowed + "; this one has no images in class subfolders")
    if not has_val:
        return classes, train, None
    unknown = sorted(p.name for p in (root / "val").iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise ConfigError("data_dir", spec.data_dir, f"val/ classes that train/ has too; val/ also has {unknown}")
    val = _class_samples(root / "val", classes)
    if not val:
        raise ConfigError("data_dir", spec.data_dir, allowed + "; its val/ folder has no images")
    return classes, train, val


def _decode_all(files: ImageFiles, spec: DataSpec) -> tuple[Tensor, Tensor]:
    """Every image of `files` decoded; ConfigError naming the first file that cannot be."""
    images, labels = [], []
    try:
        for batch_images, batch_labels in DataLoader(files, batch_size=256, num_workers=spec.num_workers):
            images.append(batch_images)
            labels.append(batch_labels)
    except Exception:
        # a worker's error arrives as its traceback text: decode here, one by one, to name the file
        for index in range(len(files)):
            try:
                files[index]
            except ImageFileError as error:
                raise ConfigError("data_dir", spec.data_dir, f"image files PIL can decode; {error}") from None
        raise
    return torch.cat(images), torch.cat(labels).long()


def _check_headers(samples: Sequence[tuple[Path, int]], spec: DataSpec) -> None:
    """Read every file's header (cheap), so a streamed set refuses a non-image before training starts."""
    for path, _ in samples:
        try:
            _open_image(path).close()
        except ImageFileError as error:
            raise ConfigError("data_dir", spec.data_dir, f"image files PIL can decode; {error}") from None


def _load_image_folder(spec: DataSpec) -> LoadedData:
    classes, train_samples, val_samples = _image_folder_samples(spec)
    if spec.val_split is not None or val_samples is None:
        val_split = DEFAULT_VAL_FRACTION if spec.val_split is None else spec.val_split
        labels = np.array([label for _, label in train_samples])
        train_index, val_index = _stratified_split(labels, val_split, spec.seed)
        train_samples, val_samples = [train_samples[i] for i in train_index], [train_samples[i] for i in val_index]
    total_mb = (len(train_samples) + len(val_samples)) * 3 * spec.image_size**2 / 2**20
    train_files, val_files = ImageFiles(train_samples, spec.image_size), ImageFiles(val_samples, spec.image_size)
    train: TensorSplit | StreamSplit
    val: TensorSplit | StreamSplit
    if total_mb <= spec.max_in_memory_mb:
        train = TensorSplit(*_decode_all(train_files, spec))
        val = TensorSplit(*_decode_all(val_files, spec))
        mean, std = channel_stats(train.images)
    else:
        _check_headers(train_samples + val_samples, spec)
        train, val = StreamSplit(train_files, spec.num_workers), StreamSplit(val_files, spec.num_workers)
        pick = torch.randperm(len(train_files), generator=torch.Generator().manual_seed(spec.seed))[:STATS_SAMPLE]
        mean, std = channel_stats(_decode_all(ImageFiles([train_samples[i] for i in pick.tolist()], spec.image_size),
                                              spec)[0])
    info = DataInfo("imagefolder", len(classes), classes, spec.image_size, mean, std, len(train), len(val),
                    isinstance(train, TensorSplit), _augment_spec(spec))
    return LoadedData(train, val, info)
