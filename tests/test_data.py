"""Datasets and batch augmentation: file formats round-trip exactly, splits and statistics, seeded augmentation."""
from __future__ import annotations

import importlib.util
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnbench.core.errors import ConfigError
from attnbench.train import DataSpec, StreamSplit, TensorSplit, check_dataset, load_dataset
from attnbench.train.augment import AugmentSpec, BatchAugment, random_crop, random_hflip


def _cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _planes_reference(rows: np.ndarray) -> np.ndarray:
    """CIFAR's documented row layout, written out: R plane, G plane, B plane, each 32 rows of 32 pixels."""
    out = np.empty((rows.shape[0], 3, 32, 32), dtype=np.uint8)
    for channel in range(3):
        for row in range(32):
            start = channel * 1024 + row * 32
            out[:, channel, row, :] = rows[:, start:start + 32]
    return out


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def _write_cifar10(folder: Path, per_batch: int = 3, test: int = 4, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for i in range(1, 6):
        batch_rows, batch_labels = _cifar_rows(rng, per_batch), rng.integers(0, 10, per_batch).tolist()
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"x", b"data": batch_rows, b"labels": batch_labels})
        rows.append(batch_rows)
        labels += batch_labels
    test_rows, test_labels = _cifar_rows(rng, test), rng.integers(0, 10, test).tolist()
    _dump(folder / "test_batch", {b"data": test_rows, b"labels": test_labels})
    _dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return np.concatenate(rows), np.array(labels), test_rows, np.array(test_labels)


def test_cifar10_pixels_and_labels_round_trip(tmp_path: Path) -> None:
    rows, labels, test_rows, test_labels = _write_cifar10(tmp_path)
    rows[0, 1024 + 5 * 32 + 7] = 201  # green plane, row 5, column 7 of the first image
    _dump(tmp_path / "data_batch_1", {b"data": rows[:3], b"labels": labels[:3].tolist()})
    train, val, info = load_dataset(DataSpec("cifar10", data_dir=str(tmp_path)))
    assert isinstance(train, TensorSplit) and train.images.dtype == torch.uint8
    assert train.images[0, 1, 5, 7] == 201
    np.testing.assert_array_equal(train.images.numpy(), _planes_reference(rows))
    np.testing.assert_array_equal(train.labels.numpy(), labels)
    np.testing.assert_array_equal(val.images.numpy(), _planes_reference(test_rows))
    np.testing.assert_array_equal(val.labels.numpy(), test_labels)
    assert (info.num_classes, info.train_size, info.val_size) == (10, 15, 4)
    assert info.classes[3] == "c3"
    expected_mean = _planes_reference(rows).astype(np.float64).mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(info.mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(info.std, _planes_reference(rows).std(axis=(0, 2, 3)) / 255, rtol=1e-9)


def test_cifar10_archive_subfolder_and_resize(tmp_path: Path) -> None:
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    train, _, info = load_dataset(DataSpec("cifar10", data_dir=str(tmp_path), image_size=16))
    assert train.images.shape == (15, 3, 16, 16) and train.images.dtype == torch.uint8
    assert info.image_size == 16


def test_cifar100_fine_labels_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows, test_rows = _cifar_rows(rng, 6), _cifar_rows(rng, 2)
    fine, coarse = [0, 99, 42, 7, 99, 3], [0, 19, 2, 1, 19, 0]
    _dump(tmp_path / "train", {b"data": rows, b"fine_labels": fine, b"coarse_labels": coarse})
    _dump(tmp_path / "test", {b"data": test_rows, b"fine_labels": [5, 98], b"coarse_labels": [1, 2]})
    _dump(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    train, val, info = load_dataset(DataSpec("cifar100", data_dir=str(tmp_path)))
    np.testing.assert_array_equal(train.images.numpy(), _planes_reference(rows))
    assert train.labels.tolist() == fine and val.labels.tolist() == [5, 98]
    assert info.num_classes == 100 and info.classes[99] == "f99"


def test_cifar_errors_name_the_folder(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(ConfigError, match=r"data_dir=.*data_batch_4") as error:
        check_dataset(DataSpec("cifar10", data_dir=str(tmp_path)))
    assert error.value.key == "data_dir" and error.value.value == str(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(DataSpec("cifar100", data_dir=str(tmp_path / "nowhere")))
    _dump(tmp_path / "data_batch_4", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ConfigError, match="3072"):
        load_dataset(DataSpec("cifar10", data_dir=str(tmp_path)))


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision would download")
def test_cifar_download_without_torchvision_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="download=True"):
        load_dataset(DataSpec("cifar10", data_dir=str(tmp_path), download=True))


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_reads_pngs_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    written = {}
    for split, count in (("train", 3), ("val", 1)):
        for label, name in enumerate(("ant", "bee")):
            for i in range(count):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                _write_png(tmp_path / split / name / f"{i}.png", pixels)
                written.setdefault(split, []).append((pixels, label))
    (tmp_path / "train" / "bee" / "notes.txt").write_text("not an image")
    wide = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)  # 16 wide: the centre crop keeps columns 4..11
    _write_png(tmp_path / "val" / "bee" / "wide.png", wide)
    written["val"].append((wide[:, 4:12], 1))
    train, val, info = load_dataset(DataSpec("imagefolder", data_dir=str(tmp_path), image_size=8, num_workers=0))
    assert info.classes == ("ant", "bee") and (info.train_size, info.val_size) == (6, 3) and info.in_memory
    for split, data in (("train", train), ("val", val)):
        for (pixels, label), image, got in zip(written[split], data.images, data.labels):
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), pixels)
            assert got == label


def test_image_folder_single_root_split_and_streaming(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        for i in range(5):
            _write_png(tmp_path / name / f"{i}.png", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    spec = DataSpec("imagefolder", data_dir=str(tmp_path), image_size=8, val_split=0.4, num_workers=0)
    memory = load_dataset(spec)
    streamed = load_dataset(replace(spec, max_in_memory_mb=0))
    assert isinstance(streamed.train, StreamSplit) and not streamed.info.in_memory
    assert (memory.info.train_size, memory.info.val_size) == (6, 4)
    assert torch.bincount(memory.val.labels).tolist() == [2, 2]  # stratified
    for a, b in zip(memory.val.batches(3), streamed.val.batches(3)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(DataSpec("imagefolder", data_dir=str(tmp_path / "missing")))
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ConfigError, match="no images") as error:
        load_dataset(DataSpec("imagefolder", data_dir=str(tmp_path)))
    assert error.value.key == "data_dir"


def test_digits_split_scale_and_statistics() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, val, info = load_dataset(DataSpec())
    assert (len(train), len(val), info.num_classes) == (1437, 360, 10)
    assert train.images.shape == (1437, 3, 32, 32)
    assert torch.equal(train.images[:, 0], train.images[:, 2])
    counts = np.bincount(digits.target)
    assert (torch.bincount(val.labels).numpy() - counts * 0.2).__abs__().max() <= 1  # stratified
    # Bilinear, half-pixel centres (align_corners=False): output pixel 2 samples source 2.5/4 - 0.5 = 0.125.
    original = digits.images / 16
    first = next(i for i in range(len(digits.target)) if np.allclose(
        np.asarray(torch.nn.functional.interpolate(torch.tensor(original[i])[None, None].float(), size=32,
                                                   mode="bilinear", align_corners=False)[0, 0]),
        train.images[0, 0].numpy()))
    w = np.array([0.875, 0.125])
    expected = w @ original[first][:2, :2] @ w
    assert train.images[0, 0, 2, 2].item() == pytest.approx(expected, abs=1e-6)
    normalised = (train.images - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    assert normalised.mean().item() == pytest.approx(0, abs=1e-5)
    assert normalised.std().item() == pytest.approx(1, abs=1e-3)
    assert info.augment == AugmentSpec(crop_padding=4, hflip=False)  # mirrored digits are not digits


def test_digits_native_size_keeps_every_image() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, val, _ = load_dataset(DataSpec(image_size=8, val_split=0.1, seed=3))
    key = lambda image, label: (np.asarray(image, dtype=np.float32).tobytes(), int(label))  # noqa: E731
    original = sorted(key(image / 16, label) for image, label in zip(digits.images, digits.target))
    loaded = sorted(key(image[0], label) for split in (train, val) for image, label in zip(split.images, split.labels))
    assert loaded == original


def test_synthetic_is_seeded() -> None:
    spec = DataSpec("synthetic", image_size=8, synthetic_samples=50, num_classes=5, seed=7)
    a, b = load_dataset(spec), load_dataset(spec)
    other = load_dataset(replace(spec, seed=8))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.train.images, other.train.images)
    assert (a.info.train_size, a.info.val_size, a.train.images.shape[1:]) == (40, 10, (3, 8, 8))


@pytest.mark.parametrize("fields, key", [
    ({"dataset": "mnist"}, "dataset"),
    ({"image_size": 4}, "image_size"),
    ({"val_split": 1.5}, "val_split"),
    ({"val_split": 0.0}, "val_split"),
    ({"val_split": True}, "val_split"),
    ({"crop_padding": 32}, "crop_padding"),
    ({"dataset": "cifar10"}, "data_dir"),
    ({"num_workers": -1}, "num_workers"),
    ({"hflip": "yes"}, "hflip"),
])
def test_bad_spec_fields_name_key_and_value(fields: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        DataSpec(**fields)
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}={fields.get(key, None)!r}")


@pytest.mark.parametrize("val_split", [5000, 1797, 5])  # more than the data; fewer than the 10 classes
def test_validation_split_larger_than_the_data(val_split: int) -> None:
    with pytest.raises(ConfigError, match=f"val_split={val_split}"):
        load_dataset(DataSpec(val_split=val_split))


def test_tensor_split_batches_cover_every_sample_once() -> None:
    split = TensorSplit(torch.arange(10).view(10, 1, 1, 1), torch.arange(10))
    ordered = torch.cat([y for _, y in split.batches(4)])
    shuffled = torch.cat([y for _, y in split.batches(4, torch.Generator().manual_seed(0))])
    assert ordered.tolist() == list(range(10))
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))


def _batch(seed: int = 0, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    images = torch.randint(0, 256, (16, 3, 6, 6), generator=torch.Generator().manual_seed(seed))
    return images.to(dtype)


def test_random_crop_is_a_window_of_the_padded_image() -> None:
    images = _batch()
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for n in range(images.shape[0]):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[n], padded[n, :, dy:dy + 6, dx:dx + 6])]
        assert matches, f"sample {n} is no window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 3  # offsets vary across the batch
    assert torch.equal(random_crop(images, 0, torch.Generator()), images)


def test_random_hflip_mirrors_about_half() -> None:
    images = _batch(dtype=torch.float32)
    out = random_hflip(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < len(flipped)


def test_augmentation_is_seeded_and_keeps_shapes() -> None:
    augment = BatchAugment((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), AugmentSpec(4, True), "cpu")
    images = torch.randint(0, 256, (32, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    runs = [augment.train(images, torch.Generator().manual_seed(seed)) for seed in (5, 5, 6)]
    assert runs[0].shape == images.shape and runs[0].dtype == torch.float32
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    torch.testing.assert_close(augment.normalize(images), expected)
    channels_last = BatchAugment((0.5,) * 3, (0.2,) * 3, None, "cpu", channels_last=True)
    assert channels_last.train(images, torch.Generator()).is_contiguous(memory_format=torch.channels_last)
