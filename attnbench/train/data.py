"""Datasets for short training runs: scikit-learn digits, CIFAR-10/100, image folders, synthetic tensors.

`load_dataset(spec)` returns (train, val, info). Splits that fit in memory are
`TensorSplit`s, moved whole to the training device so that batching and
augmentation (`augment.py`) run there; large image folders are `StreamSplit`s
read by DataLoader workers. Both hand out raw batches (uint8, or floats in
[0, 1]); normalisation with `info.mean` / `info.std` happens on the device.
"""
from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from attnbench.core.checks import check_int
from attnbench.core.errors import ConfigError
from attnbench.train.augment import AugmentSpec
from attnbench.train.safe_pickle import UnsafePickleError, load_data_pickle

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_VAL_FRACTION = 0.2  # for sets that ship without a validation split
STATS_SAMPLE = 2048  # streamed sets estimate mean/std from this many training images
MAX_IMAGE_PIXELS = 1 << 26  # a file declaring more pixels (64 Mpx) is refused as a likely decompression bomb


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


class ImageFiles(Dataset):
    """Image files with labels, decoded with PIL and fitted (centre crop to square, bilinear) to `size`."""

    def __init__(self, samples: Sequence[tuple[Path, int]], size: int) -> None:
        self.samples = list(samples)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image, ImageOps

        path, label = self.samples[index]
        with _open_image(path) as image:
            fitted = _decoded(path, lambda: ImageOps.fit(image.convert("RGB"), (self.size, self.size),
                                                          method=Image.Resampling.BILINEAR))
        return torch.from_numpy(np.array(fitted, dtype=np.uint8)).permute(2, 0, 1), label


class ImageFileError(ValueError):
    """An image file PIL cannot decode, or one too large to be an honest image; the message names the file."""


def _decoded(path: Path, decode: Any) -> Any:
    """`decode()` with PIL's failures (and its decompression-bomb warning) as one ImageFileError naming `path`."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return decode()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageFileError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None


def _open_image(path: Path) -> Any:
    """The file opened lazily (header only), refused when it is no image or declares more than MAX_IMAGE_PIXELS."""
    from PIL import Image

    image = _decoded(path, lambda: Image.open(path))
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise ImageFileError(f"{path}: declares {image.width} x {image.height} pixels, more than the "
                             f"{MAX_IMAGE_PIXELS} a training image may have (a decompression bomb?)")
    return image


class StreamSplit:
    """A split read from files by DataLoader workers, batch by batch, onto the training device."""

    def __init__(self, files: ImageFiles, num_workers: int, device: torch.device | str = "cpu") -> None:
        self.files = files
        self.num_workers = num_workers
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.files)

    def to(self, device: torch.device | str) -> StreamSplit:
        """The same files, delivered to `device`."""
        return StreamSplit(self.files, self.num_workers, device)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches in a random order seeded from `generator`, or in file order when it is None."""
        sampler_generator = None
        if generator is not None:
            # DataLoader samplers need a CPU generator; derive its seed from the device one.
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            sampler_generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(self.files, batch_size=batch_size, shuffle=generator is not None,
                            generator=sampler_generator, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda")
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


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


def _split(raw: _Raw, spec: DataSpec) -> tuple[TensorSplit, TensorSplit]:
    if spec.val_split is None and raw.val_images is not None and raw.val_labels is not None:
        return TensorSplit(raw.images, raw.labels), TensorSplit(raw.val_images, raw.val_labels)
    val_split = DEFAULT_VAL_FRACTION if spec.val_split is None else spec.val_split
    train, val = _stratified_split(raw.labels.numpy(), val_split, spec.seed)
    train_index, val_index = torch.from_numpy(train), torch.from_numpy(val)
    return (TensorSplit(raw.images[train_index], raw.labels[train_index]),
            TensorSplit(raw.images[val_index], raw.labels[val_index]))


def _resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize of a batch; uint8 stays uint8 (rounded), floats stay floats."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else out


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
