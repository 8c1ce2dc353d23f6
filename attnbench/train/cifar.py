"""CIFAR-10/100 from the python batches: the folder layout, the folder check, the download, the reading.

`_cifar_folder` finds the batches in data_dir or its archive subfolder (downloading them
through torchvision when asked); `_read_cifar_pickle` reads each file with the data-only
unpickler of `safe_pickle.py`, and `_read_cifar_files` checks what it holds before the
images become tensors. `_cifar` returns the set with its own test batch as validation.
"""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from attnbench.core.errors import ConfigError
from attnbench.train.datasets import DataSpec, _Raw
from attnbench.train.safe_pickle import UnsafePickleError, load_data_pickle


def _resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize of a batch; uint8 stays uint8 (rounded), floats stay floats."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else out


_CIFAR_LAYOUT = {
    # dataset: (subfolder the archive unpacks to, train files, test files, label key, meta file, names key)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                b"labels", "batches.meta", b"label_names"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels", "meta", b"fine_label_names"),
}
_CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


def _cifar_folder(spec: DataSpec) -> Path:
    """The folder holding the python batches: data_dir itself or its archive subfolder; downloads if asked."""
    subfolder, train_files, test_files = _CIFAR_LAYOUT[spec.dataset][:3]
    assert spec.data_dir is not None  # DataSpec requires one for the datasets read from files
    root = Path(spec.data_dir)
    needed = train_files + test_files
    for folder in (root, root / subfolder):
        if all((folder / name).is_file() for name in needed):
            return folder
    if spec.download:
        _download_cifar(spec)
        if all((root / subfolder / name).is_file() for name in needed):
            return root / subfolder
    state = "does not exist" if not root.is_dir() else "lacks " + ", ".join(n for n in needed if not (root / n).is_file())
    raise ConfigError("data_dir", spec.data_dir, f"a folder with the {spec.dataset} python files "
                      f"{', '.join(needed)} (or its {subfolder}/ subfolder); this one {state}")


def _download_cifar(spec: DataSpec) -> None:
    try:
        import torchvision
    except ImportError:
        raise ConfigError("download", spec.download, "False unless torchvision is installed; "
                          f"otherwise put the {spec.dataset} python files in data_dir") from None
    dataset = torchvision.datasets.CIFAR10 if spec.dataset == "cifar10" else torchvision.datasets.CIFAR100
    for train in (True, False):
        dataset(root=spec.data_dir, train=train, download=True)


def _read_cifar_pickle(path: Path, spec: DataSpec) -> Any:
    """One CIFAR python file, read by the data-only unpickler; ConfigError naming the file for anything else."""
    try:
        return load_data_pickle(path)
    except UnsafePickleError as error:
        reason = f"{error}, which a CIFAR batch never does; refused before running anything"
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            UnicodeDecodeError, OSError) as error:
        reason = f"it is not a whole python pickle (empty, truncated or another format: {type(error).__name__})"
    raise ConfigError("data_dir", spec.data_dir, f"{spec.dataset} python files; {path.name}: {reason}")


def _read_cifar_files(folder: Path, names: Sequence[str], label_key: bytes, spec: DataSpec) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for name in names:
        batch = _read_cifar_pickle(folder / name, spec)

        def refuse(why: str, name: str = name) -> ConfigError:
            return ConfigError("data_dir", spec.data_dir, f"{spec.dataset} python files; {name}: {why}")

        if not isinstance(batch, dict) or not isinstance(batch.get(b"data"), np.ndarray) or label_key not in batch:
            raise refuse(f"a dict holding b'data' (an N x 3072 uint8 array) and {label_key!r}")
        data, label_list = batch[b"data"], batch[label_key]
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            # floats would wrap around when cast to bytes; the real files hold bytes
            raise refuse(f"b'data' as an N x 3072 uint8 array, not {data.dtype} of shape {data.shape}")
        if not isinstance(label_list, (list, np.ndarray)) or len(label_list) != data.shape[0]:
            count = len(label_list) if isinstance(label_list, (list, np.ndarray)) else type(label_list).__name__
            raise refuse(f"one label per image: {data.shape[0]} images, {count} labels")
        if data.shape[0] == 0:
            raise refuse("at least one image (this batch is empty)")
        if any(isinstance(label, bool) or not isinstance(label, (int, np.integer)) for label in label_list):
            raise refuse(f"integer labels under {label_key!r}")
        # Each row is the R plane, then G, then B, each 32 rows of 32 pixels.
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(np.asarray(label_list, dtype=np.int64)))
    out = torch.cat(labels)
    if out.numel() and not 0 <= int(out.min()) <= int(out.max()) < _CIFAR_CLASSES[spec.dataset]:
        raise ConfigError("data_dir", spec.data_dir, f"{spec.dataset} labels in [0, {_CIFAR_CLASSES[spec.dataset]})")
    return _resize(torch.cat(images), spec.image_size), out


def _cifar(spec: DataSpec) -> _Raw:
    folder = _cifar_folder(spec)
    _, train_files, test_files, label_key, meta_file, names_key = _CIFAR_LAYOUT[spec.dataset]
    images, labels = _read_cifar_files(folder, train_files, label_key, spec)
    val_images, val_labels = _read_cifar_files(folder, test_files, label_key, spec)
    classes = tuple(str(i) for i in range(_CIFAR_CLASSES[spec.dataset]))
    if (folder / meta_file).is_file():
        meta = _read_cifar_pickle(folder / meta_file, spec)
        names = meta.get(names_key) if isinstance(meta, dict) else None
        if isinstance(names, list) and len(names) == len(classes):
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return _Raw(images, labels, classes, val_images, val_labels)
