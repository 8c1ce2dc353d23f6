"""Environment record: the keys every number carries, values that follow torch's live state, JSON round trip."""
from __future__ import annotations

import json

import pytest
import torch

from attnbench.core.errors import ConfigError
from attnbench.measure.environment import environment_record, parse_smi_csv

KEYS = {
    "device", "device_name", "hostname", "python_version", "torch_version", "cuda_version", "cudnn_version",
    "cpu_model", "cpu_count", "threads", "matmul_allow_tf32", "cudnn_allow_tf32", "float32_matmul_precision",
    "cudnn_benchmark", "cudnn_deterministic",
}


def test_cpu_record_keys_and_json() -> None:
    record = environment_record("cpu")
    assert KEYS <= set(record)
    assert json.loads(json.dumps(record)) == record
    assert record["torch_version"] == torch.__version__ and record["threads"] == torch.get_num_threads()
    assert record["device_name"] == record["cpu_model"]


def test_record_follows_live_flags() -> None:
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    try:
        for flag in (True, False):
            torch.backends.cudnn.benchmark = flag
            torch.backends.cudnn.allow_tf32 = not flag
            torch.set_num_threads(1 if flag else 2)
            record = environment_record("cpu")
            assert record["cudnn_benchmark"] is flag and record["cudnn_allow_tf32"] is (not flag)
            assert record["threads"] == (1 if flag else 2)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_num_threads(saved[2])


def test_cpu_model_read_from_cpuinfo() -> None:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    assert environment_record("cpu")["cpu_model"] == names[0]


def test_bad_device() -> None:
    with pytest.raises(ConfigError) as error:
        environment_record("tpu")
    assert error.value.key == "device" and error.value.value == "tpu"


def test_nvidia_smi_answer_parsed() -> None:
    parsed = parse_smi_csv("550.54.15, 1980, 2619, 1980, 2619, 700.00, Enabled\n")
    assert parsed == {
        "smi_driver_version": "550.54.15", "smi_clocks_sm": 1980.0, "smi_clocks_mem": 2619.0,
        "smi_clocks_max_sm": 1980.0, "smi_clocks_max_mem": 2619.0, "smi_power_limit": 700.0,
        "smi_persistence_mode": "Enabled",
    }
    assert parse_smi_csv("[N/A], 1980, 2619, 1980, 2619, [N/A], Disabled")["smi_power_limit"] is None
    assert parse_smi_csv("garbage") == {}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_record() -> None:
    record = environment_record("cuda")
    assert record["device_name"] == torch.cuda.get_device_name()
    assert record["cuda_version"] == torch.version.cuda and record["gpu_memory_bytes"] > 0
    assert json.loads(json.dumps(record)) == record
