"""Roofline figures: datasheet peaks per GPU, the fewest bytes a forward must move, and where a latency lands.

Peaks are leads, not ceilings you will reach: a device-to-device copy and a
large matmul measured on the machine give the ceilings that count, and can be
passed in through `table`.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from attnbench.core.checks import check_number
from attnbench.core.errors import ConfigError
from attnbench.measure.latency import DTYPES, check_input_shape, check_positive_int

# Dense (no 2:4 sparsity) peaks from NVIDIA's datasheets / whitepapers, bytes/s and FLOP/s. Datasheet
# figures marked * are with sparsity and are halved here; the H100 whitepaper gives the dense SXM rates
# exactly (FP32 66.9, TF32 494.7, BF16/FP16 989.4 TFLOPS).
# "fp32" is the CUDA-core rate; "tf32", "bf16", "fp16" are tensor-core rates with fp32 accumulation.
# `match`: lower-case tokens all present in torch.cuda.get_device_name(); `exclude`: tokens that rule it out.
PEAKS: dict[str, dict[str, Any]] = {
    # H100 Tensor Core GPU datasheet, SXM column: 3.35 TB/s; FP32 67, TF32 989*, BF16/FP16 1,979* TFLOPS (*sparse).
    "h100-sxm": {"match": ("h100",), "exclude": ("pcie", "nvl"), "bandwidth": 3.35e12,
                 "fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    # Same datasheet, PCIe column: 2 TB/s; FP32 51, TF32 756*, BF16/FP16 1,513* TFLOPS.
    "h100-pcie": {"match": ("h100", "pcie"), "exclude": (), "bandwidth": 2.0e12,
                  "fp32": 51.2e12, "tf32": 378.0e12, "bf16": 756.0e12, "fp16": 756.0e12},
    # H200 datasheet, SXM column: 4.8 TB/s; compute as H100 SXM (FP32 67, TF32 989*, BF16/FP16 1,979*).
    "h200": {"match": ("h200",), "exclude": ("nvl",), "bandwidth": 4.8e12,
             "fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    # A100 datasheet: 40GB 1,555 GB/s; FP32 19.5, TF32 156, BF16/FP16 312 TFLOPS (dense).
    "a100-40gb": {"match": ("a100",), "exclude": ("80gb",), "bandwidth": 1.555e12,
                  "fp32": 19.5e12, "tf32": 156.0e12, "bf16": 312.0e12, "fp16": 312.0e12},
    # A100 datasheet: 80GB SXM 2,039 GB/s.
    "a100-80gb-sxm": {"match": ("a100", "80gb"), "exclude": ("pcie",), "bandwidth": 2.039e12,
                      "fp32": 19.5e12, "tf32": 156.0e12, "bf16": 312.0e12, "fp16": 312.0e12},
    # A100 datasheet: 80GB PCIe 1,935 GB/s.
    "a100-80gb-pcie": {"match": ("a100", "80gb", "pcie"), "exclude": (), "bandwidth": 1.935e12,
                       "fp32": 19.5e12, "tf32": 156.0e12, "bf16": 312.0e12, "fp16": 312.0e12},
    # L4 datasheet: 300 GB/s; FP32 30.3, TF32 120*, BF16/FP16 242* TFLOPS.
    "l4": {"match": ("l4",), "exclude": (), "bandwidth": 0.3e12,
           "fp32": 30.3e12, "tf32": 60.0e12, "bf16": 121.0e12, "fp16": 121.0e12},
    # Ada Lovelace whitepaper, RTX 4090: 1,008 GB/s; FP32 82.6, TF32 82.6, BF16/FP16 (fp32 accumulate) 165.2.
    "rtx-4090": {"match": ("rtx", "4090"), "exclude": (), "bandwidth": 1.008e12,
                 "fp32": 82.6e12, "tf32": 82.6e12, "bf16": 165.2e12, "fp16": 165.2e12},
}
_RATE_KEYS = ("bandwidth", "fp32", "tf32", "bf16", "fp16")


def device_peaks(
    device_name: str, dtype: str = "fp32", allow_tf32: bool = False, table: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any] | None:
    """Peak bandwidth and compute for `device_name` at `dtype`, or None when no table entry matches.

    `table` entries replace or add to PEAKS by key. Among matches the entry naming the most
    tokens wins (so "A100 80GB PCIe" beats "A100"). With fp32, `allow_tf32` picks the tf32 rate.
    """
    if dtype not in DTYPES:
        raise ConfigError("dtype", dtype, "one of " + ", ".join(DTYPES))
    entries = {**PEAKS, **(table or {})}
    for key, entry in entries.items():
        _check_entry(key, entry)
    tokens = set(re.split(r"[^a-z0-9]+", device_name.lower()))
    matches = [
        (len(entry["match"]), key)
        for key, entry in entries.items()
        if set(entry["match"]) <= tokens and not set(entry.get("exclude", ())) & tokens
    ]
    if not matches:
        return None
    key = max(matches)[1]
    mode = "tf32" if dtype == "fp32" and allow_tf32 else dtype
    return {"device": key, "bandwidth": float(entries[key]["bandwidth"]), "compute": float(entries[key][mode]), "mode": mode}


def _check_entry(key: str, entry: Mapping[str, Any]) -> None:
    allowed = f"a mapping with 'match' (tokens) and positive numbers for {', '.join(_RATE_KEYS)}"
    if not isinstance(entry, Mapping) or not entry.get("match") or isinstance(entry["match"], str):
        raise ConfigError(f"peaks.{key}", entry, allowed)
    for rate in _RATE_KEYS:
        check_number(f"peaks.{key}.{rate}", entry.get(rate), 0, allowed="a finite number > 0", low_open=True)


def minimum_bytes(module: nn.Module, input_shape: Sequence[int], dtype: str = "fp32", batch_size: int = 1) -> int:
    """Fewest bytes one forward moves: input read and output written in `dtype`, weights read once as stored.

    Weights are parameters and buffers at their stored dtype (autocast keeps them fp32). The output
    shape comes from a forward of a copy of `module` on the meta device (no compute, no memory).
    """
    if dtype not in DTYPES:
        raise ConfigError("dtype", dtype, "one of " + ", ".join(DTYPES))
    shape = check_input_shape(input_shape)
    check_positive_int("batch_size", batch_size)
    element = DTYPES[dtype].itemsize
    weights = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    meta = copy.deepcopy(module).to("meta").eval()
    with torch.no_grad():
        out = meta(torch.empty((batch_size, *shape), device="meta"))
    return (batch_size * _numel(shape) + out.numel()) * element + weights


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for side in shape:
        count *= side
    return count


def roofline(flops: float, bytes_moved: float, latency_s: float, peaks: Mapping[str, float]) -> dict[str, Any]:
    """Where a measured latency sits under the roofline given `peaks` {"bandwidth": B/s, "compute": FLOP/s}.

    `bound` is the roof under the kernel's arithmetic intensity: "memory" below the ridge point
    (compute / bandwidth), else "compute". `roofline_fraction` is the floor time over the latency.
    """
    check_number("flops", flops, 0, allowed="a finite number >= 0")
    check_number("bytes_moved", bytes_moved, 0, allowed="a finite number > 0", low_open=True)
    check_number("latency_s", latency_s, 0, allowed="a finite number > 0", low_open=True)
    check_number("peaks.bandwidth", peaks.get("bandwidth"), 0, allowed="a finite number > 0", low_open=True)
    check_number("peaks.compute", peaks.get("compute"), 0, allowed="a finite number > 0", low_open=True)
    bandwidth, compute = float(peaks["bandwidth"]), float(peaks["compute"])
    intensity = flops / bytes_moved
    ridge = compute / bandwidth
    floor_s = max(flops / compute, bytes_moved / bandwidth)
    return {
        "arithmetic_intensity": intensity,  # FLOP per byte
        "ridge_intensity": ridge,
        "bound": "memory" if intensity < ridge else "compute",
        "achieved_bandwidth": bytes_moved / latency_s,
        "achieved_compute": flops / latency_s,
        "bandwidth_fraction": bytes_moved / latency_s / bandwidth,
        "compute_fraction": flops / latency_s / compute,
        "floor_s": floor_s,
        "roofline_fraction": floor_s / latency_s,
    }
