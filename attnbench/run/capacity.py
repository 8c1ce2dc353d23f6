"""Whether a point's input fits the machine at all, checked before anything runs.

An input side the backbone takes can still be far too large for the machine (a typo, 100000):
every point would then fail, one after the other. The probe of the backbone on the meta device
gives its largest feature map per sample; holding that map's input and output at the point's
batch must fit in the device's memory, or the point is refused with the size that would fit.
"""
from __future__ import annotations

import math
import os

import torch

from attnbench.backbones import get_backbone_entry, probe_sites
from attnbench.config.point import Point
from attnbench.core.errors import ConfigError

BYTES_PER_VALUE = 4  # fp32; autocast keeps weights and many activations in fp32 too
LIVE_COPIES = 2  # a layer's input and output are alive together


def device_memory(device: str) -> int:
    """Bytes of memory on `device`: the GPU's, or the machine's RAM for the CPU."""
    if device == "cuda":
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_capacity(points: tuple[Point, ...], device: str) -> None:
    """ConfigError naming `input_size` for the first point whose largest feature map alone would not fit on `device`."""
    have = device_memory(device)
    for backbone, size, batch in sorted({(p.backbone, p.input_size, p.batch_size) for p in points}):
        entry = get_backbone_entry(backbone)
        largest = probe_sites(backbone, entry.positions[0], size).largest_map
        need = largest * batch * BYTES_PER_VALUE * LIVE_COPIES
        if need > have:
            fits = int(size * math.sqrt(have / need))  # feature maps grow with the square of the side
            raise ConfigError("input_size", size, f"at most about {fits} for {backbone} at batch {batch} on this "
                              f"{device}: its largest feature map alone would need {need / 2**30:,.1f} GiB, and "
                              f"the {device} has {have / 2**30:,.1f} GiB")
