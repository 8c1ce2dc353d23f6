"""The GPU check's dry run: the same code path on the CPU at tiny sizes, so that it cannot rot where no GPU is lent."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_passes_and_prints_its_table() -> None:
    out = subprocess.run([sys.executable, "-m", "attnbench.gpucheck", "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for stage in ("tests [ok", "modules [ok", "cross-check [ok", "training [ok"):
        assert stage in out.stdout
    for figure in ("A/A change", "perf_counter median vs profiler", "images/s", "busy fraction"):
        assert figure in out.stdout
    assert "se " in out.stdout and "cbam " in out.stdout  # the module table


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the real check runs")
def test_without_a_gpu_the_real_check_is_one_line_and_status_2() -> None:
    out = subprocess.run([sys.executable, "-m", "attnbench.gpucheck"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--dry-run" in out.stderr and "Traceback" not in out.stderr
