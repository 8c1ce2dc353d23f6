"""Batch augmentation on the training device: random crop with zero padding, horizontal flip, normalisation.

Every op works on a whole NCHW batch at once and draws its randomness from a
`torch.Generator` on the batch's device, so a seed fixes the output and the
GPU never waits on per-image Python code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation: pad-and-crop by up to `crop_padding` pixels, mirror with p=0.5."""

    crop_padding: int = 4
    hflip: bool = True


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad each image by `padding` and cut a window of the original size at a random offset."""
    if padding == 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=images.device)
    rows = offsets[:, :1] + torch.arange(height, device=images.device)
    cols = offsets[:, 1:] + torch.arange(width, device=images.device)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indices around a slice put their dims first: (N, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_hflip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 0.5."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 pixels to floats in [0, 1]; float images are taken to be in [0, 1] already."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


class BatchAugment:
    """Turns stored batches (uint8 or [0, 1] floats) into normalised float batches, augmented for training."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], spec: AugmentSpec | None,
                 device: torch.device | str, channels_last: bool = False) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.spec = spec
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def normalize(self, images: Tensor) -> Tensor:
        """(x - mean) / std per channel, in the memory format the model expects."""
        out = (to_unit_float(images) - self.mean) / self.std
        return out.contiguous(memory_format=self.memory_format)

    def train(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment (crop, flip) then normalise; the spec None means normalise only."""
        if self.spec is not None:
            images = random_crop(images, self.spec.crop_padding, generator)
            if self.spec.hflip:
                images = random_hflip(images, generator)
        return self.normalize(images)
