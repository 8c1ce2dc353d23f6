"""Data files are hostile until checked: CIFAR pickles run no code, broken files are one line naming the file."""
from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_one_line_refusal, completed_rows, write
from PIL import Image

from attnbench.cli import main
from attnbench.core.errors import ConfigError
from attnbench.train import DataSpec, load_dataset
from attnbench.train.safe_pickle import UnsafePickleError, load_data_pickle

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _batch(n: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"x", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist()}


def _cifar(folder: Path, protocol: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(CIFAR_FILES):
        (folder / name).write_bytes(pickle.dumps(_batch(seed=index), protocol=protocol))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder


class _Payload:
    """Pickles as a call of `function(*args)`: what a malicious batch does."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


class _Stealthy:
    """A valid-looking batch whose unpickling also runs a command (then returns the real batch)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        # builtins.eval of an expression that runs the command and evaluates to a real-looking dict
        expression = (f"__import__('os').system({self.command!r}) and None or "
                      "{b'data': __import__('numpy').zeros((2, 3072), 'uint8'), b'labels': [0, 1]}")
        return eval, (expression,)


def _payloads(marker: Path) -> dict[str, object]:
    touch = f"touch {marker}"
    return {
        "os.system": _Payload(os.system, touch),
        "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess": _Payload(subprocess.call, ["touch", str(marker)]),
        "stealthy eval": _Stealthy(touch),
    }


@pytest.mark.parametrize("style", ["os.system", "builtins.exec", "subprocess", "stealthy eval"])
def test_a_malicious_batch_runs_nothing_and_is_named(tmp_path: Path, style: str) -> None:
    marker = tmp_path / "pwned"
    folder = _cifar(tmp_path / "cifar")
    (folder / "data_batch_1").write_bytes(pickle.dumps(_payloads(marker)[style]))
    with pytest.raises(ConfigError) as error:
        load_dataset(DataSpec("cifar10", data_dir=str(folder)))
    assert not marker.exists()
    assert "data_batch_1" in str(error.value) and "refused before running anything" in str(error.value)


def test_the_unpickler_names_the_callable_it_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps(_Payload(os.system, "true")))
    with pytest.raises(UnsafePickleError) as error:
        load_data_pickle(path)
    assert error.value.callable in ("posix.system", "os.system")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_format_batches_still_load(tmp_path: Path, protocol: int) -> None:
    folder = _cifar(tmp_path / "cifar", protocol)
    train, val, info = load_dataset(DataSpec("cifar10", data_dir=str(folder)))
    assert len(train) == 10 and len(val) == 2 and info.classes[3] == "c3"
    np.testing.assert_array_equal(train.images[:2].reshape(2, -1).numpy(), _batch(seed=0)[b"data"])


def test_a_python2_style_batch_loads(tmp_path: Path) -> None:
    """CIFAR's files were written by Python 2: str values, numpy arrays pickled with protocol 2."""
    folder = _cifar(tmp_path / "cifar", protocol=2)
    batch = load_data_pickle(folder / "data_batch_2")
    assert set(batch) == {b"batch_label", b"data", b"labels"} and batch[b"data"].dtype == np.uint8


def _bad_batches() -> dict[str, bytes | dict]:
    good = _batch()
    return {
        "zero bytes": b"",
        "truncated": pickle.dumps(good)[:100],
        "text": b"this is not a pickle\n",
        "counts differ": {b"data": good[b"data"], b"labels": [1, 2, 3]},
        "float pixels": {b"data": good[b"data"].astype(np.float32) * 2.0, b"labels": good[b"labels"]},
        "empty": {b"data": np.zeros((0, 3072), np.uint8), b"labels": []},
    }


BAD_BATCH_WORDS = {
    "zero bytes": "not a whole python pickle", "truncated": "not a whole python pickle",
    "text": "not a whole python pickle", "counts differ": "2 images, 3 labels",
    "float pixels": "uint8 array, not float32", "empty": "this batch is empty",
}


@pytest.mark.parametrize("case", list(BAD_BATCH_WORDS))
def test_a_broken_batch_is_one_line_naming_it_and_the_store_is_intact(tmp_path: Path, results: Path, capsys,
                                                                     case: str) -> None:
    before = completed_rows(results / "attnbench.db")
    folder = _cifar(tmp_path / "cifar")
    bad = _bad_batches()[case]
    (folder / "data_batch_3").write_bytes(bad if isinstance(bad, bytes) else pickle.dumps(bad))
    grid = write(tmp_path / "cifar.yaml", {
        "name": "cifar", "backbones": [{"name": "cifar_resnet20", "input_size": 32, "num_classes": 10}],
        "variants": ["se"], "train": {"data": {"dataset": "cifar10", "data_dir": str(folder)}, "epochs": 1, "seeds": [0]},
    })
    status = main(["--grid", str(grid), "--results", str(results), "--wandb", "disabled", "--quiet"])
    assert_one_line_refusal(capsys, status, "train.data.data_dir", "data_batch_3", BAD_BATCH_WORDS[case])
    assert completed_rows(results / "attnbench.db") == before


def _png_folder(root: Path) -> Path:
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(2):
                noise = np.random.default_rng(index).integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(noise).save(folder / f"{index}.png")
    return root


def _bomb(path: Path) -> None:
    """A small PNG whose header declares 30000 x 30000 pixels (PIL would inflate it to 2.7 GB)."""
    Image.new("1", (30000, 30000)).save(path, optimize=True)


BAD_IMAGES = {
    "zero bytes": lambda path: path.write_bytes(b""),
    "text": lambda path: path.write_text("not an image"),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:400]),  # of about 840 bytes
    "decompression bomb": _bomb,
}


@pytest.mark.parametrize("streamed", [False, True], ids=["in memory", "streamed"])
@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_a_broken_image_is_one_line_naming_the_file(tmp_path: Path, case: str, streamed: bool) -> None:
    root = _png_folder(tmp_path / "images")
    bad = root / "train" / "b" / "1.png"
    BAD_IMAGES[case](bad)
    spec = DataSpec("imagefolder", data_dir=str(root), image_size=8, num_workers=0,
                    max_in_memory_mb=0.0 if streamed else 2048.0)
    if streamed and case == "truncated":
        pytest.skip("a streamed set reads headers only before training; a truncated body fails its point, named")
    with pytest.raises(ConfigError) as error:
        load_dataset(spec)
    assert str(bad) in str(error.value) and error.value.key == "data_dir"


def test_a_truncated_image_in_a_worker_is_named(tmp_path: Path) -> None:
    root = _png_folder(tmp_path / "images")
    bad = root / "val" / "a" / "0.png"
    BAD_IMAGES["truncated"](bad)
    with pytest.raises(ConfigError) as error:
        load_dataset(DataSpec("imagefolder", data_dir=str(root), image_size=8, num_workers=1))
    assert str(bad) in str(error.value)
