"""Image files as a dataset: PIL decoding under the decompression-bomb limit, and the streamed split.

`ImageFiles` decodes one image per item (centre crop to square, bilinear fit to the
training size); `_open_image` reads only a header and refuses a file that declares more
than MAX_IMAGE_PIXELS, and `_decoded` turns PIL's failures into one `ImageFileError`
naming the file. `StreamSplit` hands such files out batch by batch through DataLoader
workers, for image folders too large to hold in memory.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

MAX_IMAGE_PIXELS = 1 << 26  # a file declaring more pixels (64 Mpx) is refused as a likely decompression bomb


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
