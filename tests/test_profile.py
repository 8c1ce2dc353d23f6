"""Profiles: the traces written are parsed by torch-tb-profiler's own loader (what TensorBoard shows)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from attnbench.core.errors import ConfigError
from attnbench.measure.profile import profile_model


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def tb_profiler():
    # Optional extra (attnbench[profile]): without it the parse cannot be checked, so say so loudly.
    return pytest.importorskip(
        "torch_tb_profiler", reason="torch-tb-profiler is not installed: `pip install attnbench[profile]` to check traces"
    )


def test_trace_opens_in_the_tensorboard_plugin(tmp_path: Path) -> None:
    tb_profiler()
    from torch_tb_profiler import consts
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.run_generator import RunGenerator

    model = convnet().train()
    paths = profile_model(model, (3, 16, 16), tmp_path / "run", steps=2, wait=1, warmup=1, worker_name="point0")
    assert model.training
    assert len(paths) == 1 and paths[0].parent == tmp_path / "run"
    match = consts.WORKER_PATTERN.match(paths[0].name)  # the plugin's own file-name rule
    assert match and match.group(1) == "point0"
    data = RunProfileData.parse(match.group(1), None, str(paths[0]), str(tmp_path))
    # Steps 0 (wait) and 1 (warmup) are dropped; the two active steps are ProfilerStep#2 and #3.
    assert data.steps_names == ["2", "3"]
    ops = {op.name for op in data.op_list_groupby_name}
    assert {"aten::conv2d", "aten::batch_norm", "aten::relu", "aten::linear"} <= ops
    run = RunGenerator(match.group(1), None, data).generate_run_profile()
    assert {view.name for view in run.views} >= {"overall", "operator", "trace", "memory"}
    # The same file is plain Chrome-trace JSON (what Perfetto opens).
    assert json.loads(paths[0].read_text())["traceEvents"]


def test_bad_arguments(tmp_path: Path) -> None:
    for kwargs, key in ((dict(steps=0), "steps"), (dict(device="npu"), "device"), (dict(dtype="fp64"), "dtype")):
        with pytest.raises(ConfigError) as error:
            profile_model(convnet(), (3, 8, 8), tmp_path, **kwargs)
        assert error.value.key == key


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trace_has_kernels(tmp_path: Path) -> None:
    tb_profiler()
    from torch_tb_profiler.profiler.data import RunProfileData

    paths = profile_model(convnet(), (3, 32, 32), tmp_path, device="cuda", steps=2, worker_name="gpu")
    data = RunProfileData.parse("gpu", None, str(paths[0]), str(tmp_path))
    assert data.has_kernel and data.steps_names == ["2", "3"]
