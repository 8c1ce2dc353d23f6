"""The environment a number was measured in: device, driver, library versions, math modes, threads, clocks."""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from attnbench.measure.latency import check_device

# Read-only nvidia-smi fields; values as nvidia-smi prints them with nounits (clocks MHz, power W).
_SMI_FIELDS = (
    "driver_version",
    "clocks.sm",
    "clocks.mem",
    "clocks.max.sm",
    "clocks.max.mem",
    "power.limit",
    "persistence_mode",
)
_SMI_TIMEOUT_S = 10


def environment_record(device: str = "cpu") -> dict[str, Any]:
    """Everything that changes a measurement on `device`, as a flat JSON-able dict (None where unreadable)."""
    check_device(device)
    record: dict[str, Any] = {
        "device": device,
        "device_name": cpu_model() if device == "cpu" else torch.cuda.get_device_name(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_mhz": _cpu_mhz(),
        "cpu_governor": _read_text(Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
    }
    record.update(_gpu_record() if device == "cuda" else {})
    return record


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, else platform.processor(), else None."""
    for line in (_read_text(Path("/proc/cpuinfo")) or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _cpu_mhz() -> float | None:
    for line in (_read_text(Path("/proc/cpuinfo")) or "").splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":", 1)[1])
    return None


def _gpu_record() -> dict[str, Any]:
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    record: dict[str, Any] = {
        "gpu_index": index,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_memory_bytes": props.total_memory,
        "gpu_multiprocessors": props.multi_processor_count,
        "gpu_l2_bytes": getattr(props, "L2_cache_size", None),
        "gpu_bf16_supported": torch.cuda.is_bf16_supported(),
        # The CUDA driver API version (e.g. 12040); nvidia-smi gives the display driver's own version.
        "cuda_driver_api_version": _cuda_driver_api_version(),
    }
    record.update({f"smi_{field.replace('.', '_')}": None for field in _SMI_FIELDS})
    record.update(_nvidia_smi(props))
    return record


def _nvidia_smi(props: Any) -> dict[str, Any]:
    # By UUID: torch's device index differs from nvidia-smi's under CUDA_VISIBLE_DEVICES.
    uuid = str(getattr(props, "uuid", "") or "")
    if shutil.which("nvidia-smi") is None or not uuid:
        return {}
    gpu_id = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    command = ["nvidia-smi", f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits", f"--id={gpu_id}"]
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=_SMI_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_smi_csv(output)


def parse_smi_csv(output: str) -> dict[str, Any]:
    """nvidia-smi's one-line CSV answer for _SMI_FIELDS as smi_* keys (numbers as floats, N/A as None)."""
    values = [value.strip() for value in output.strip().split(",")]
    if len(values) != len(_SMI_FIELDS):
        return {}
    return {f"smi_{field.replace('.', '_')}": _number_or_text(value) for field, value in zip(_SMI_FIELDS, values)}


def _cuda_driver_api_version() -> int | None:
    get_version = getattr(torch._C, "_cuda_getDriverVersion", None)
    return int(get_version()) if get_version is not None else None


def _number_or_text(value: str) -> float | str | None:
    if value in ("", "[N/A]", "N/A", "[Not Supported]"):
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None

