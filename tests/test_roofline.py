"""Roofline arithmetic by hand, the minimum-bytes count, and device peak lookup."""
from __future__ import annotations

import pytest
from torch import nn

from attnbench.core.errors import ConfigError
from attnbench.measure.roofline import PEAKS, device_peaks, minimum_bytes, roofline


def test_compute_bound_point() -> None:
    # 2 TFLOP over 10 GB: 200 FLOP/B, above the ridge 1e14 / 2e12 = 50 FLOP/B.
    r = roofline(2e12, 1e10, 0.05, {"bandwidth": 2e12, "compute": 1e14})
    assert r["arithmetic_intensity"] == pytest.approx(200.0) and r["ridge_intensity"] == pytest.approx(50.0)
    assert r["bound"] == "compute"
    assert r["achieved_compute"] == pytest.approx(4e13) and r["compute_fraction"] == pytest.approx(0.4)
    assert r["achieved_bandwidth"] == pytest.approx(2e11) and r["bandwidth_fraction"] == pytest.approx(0.1)
    # Floor: max(2e12 / 1e14, 1e10 / 2e12) = max(20 ms, 5 ms) = 20 ms, 40 % of the 50 ms measured.
    assert r["floor_s"] == pytest.approx(0.02) and r["roofline_fraction"] == pytest.approx(0.4)


def test_memory_bound_point() -> None:
    r = roofline(1e9, 1e9, 1e-3, {"bandwidth": 2e12, "compute": 1e14})
    assert r["bound"] == "memory" and r["arithmetic_intensity"] == pytest.approx(1.0)
    assert r["bandwidth_fraction"] == pytest.approx(0.5)  # 1 TB/s of 2
    assert r["floor_s"] == pytest.approx(5e-4) and r["roofline_fraction"] == pytest.approx(0.5)


@pytest.mark.parametrize(("args", "key"), [
    ((1e9, 0, 1e-3, {"bandwidth": 1.0, "compute": 1.0}), "bytes_moved"),
    ((1e9, 1e9, 0, {"bandwidth": 1.0, "compute": 1.0}), "latency_s"),
    ((-1, 1e9, 1e-3, {"bandwidth": 1.0, "compute": 1.0}), "flops"),
    ((1e9, 1e9, 1e-3, {"compute": 1.0}), "peaks.bandwidth"),
])
def test_roofline_bad_input(args: tuple, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        roofline(*args)
    assert error.value.key == key


def convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_minimum_bytes_by_hand() -> None:
    weights = (8 * 3 * 3 * 3 + 8 + 8 + 8 + 8 * 10 + 10) * 4  # conv, BN affine, linear (fp32)
    buffers = (8 + 8) * 4 + 8  # BN running mean and var, int64 batch counter
    for dtype, element in (("fp32", 4), ("bf16", 2)):
        expected = (2 * 3 * 16 * 16 + 2 * 10) * element + weights + buffers
        assert minimum_bytes(convnet(), (3, 16, 16), dtype, batch_size=2) == expected


def test_minimum_bytes_leaves_the_module_alone() -> None:
    model = convnet()
    minimum_bytes(model, (3, 8, 8))
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize(("name", "key"), [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb-sxm"),
    ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA L40S", None),  # not an L4
    ("NVIDIA H100 NVL", None),  # different memory: no silent SXM figures
])
def test_device_lookup(name: str, key: str | None) -> None:
    peaks = device_peaks(name)
    assert (peaks or {}).get("device") == key


def test_peaks_follow_dtype_and_tf32() -> None:
    assert device_peaks("NVIDIA H100 80GB HBM3", "bf16")["compute"] == 989.4e12
    assert device_peaks("NVIDIA H100 80GB HBM3", "fp32")["compute"] == 66.9e12
    assert device_peaks("NVIDIA H100 80GB HBM3", "fp32", allow_tf32=True)["compute"] == 494.7e12
    assert device_peaks("NVIDIA H200")["bandwidth"] == 4.8e12
    # Dense tensor rates are half the sparse datasheet figures (A100: 312 dense, 624 sparse).
    assert PEAKS["a100-40gb"]["fp16"] == 312e12


def test_table_override() -> None:
    measured = {**PEAKS["h100-sxm"], "bandwidth": 3.0e12}
    assert device_peaks("NVIDIA H100 80GB HBM3", table={"h100-sxm": measured})["bandwidth"] == 3.0e12
    extra = {"match": ("l40s",), "bandwidth": 864e9, "fp32": 91.6e12, "tf32": 183e12, "bf16": 362e12, "fp16": 362e12}
    assert device_peaks("NVIDIA L40S", table={"l40s": extra})["device"] == "l40s"
    with pytest.raises(ConfigError) as error:
        device_peaks("NVIDIA L40S", table={"l40s": {**extra, "bandwidth": -1}})
    assert error.value.key == "peaks.l40s.bandwidth"
    with pytest.raises(ConfigError):
        device_peaks("NVIDIA L4", dtype="int8")

