"""A module registered in a file of its own is covered by the contract tests with no test written for it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THROWAWAY = '''
"""A throwaway gate for the contract tests: x * sigmoid(mean over channels), one learnable scale."""
import torch
from torch import nn

from attnbench.modules.hparams import Float
from attnbench.modules.registry import register_module


@register_module("throwaway", kind="gate", paper="none (a test module)", params={"init": Float(1.0, low=0.0, high=10.0)})
class Throwaway(nn.Module):
    def __init__(self, channels: int, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.scale * x.mean(dim=1, keepdim=True))
'''


def test_a_newly_registered_module_is_covered_without_being_named(tmp_path: Path) -> None:
    (tmp_path / "throwaway_plugin.py").write_text(THROWAWAY)  # imported by pytest as a plugin: it registers itself
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "throwaway_plugin", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_contracts.py"), "-k", "throwaway", "-rA"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    passed = [line for line in result.stdout.splitlines() if line.startswith("PASSED") and "throwaway" in line]
    kinds = {line.split("::")[1].split("[")[0] for line in passed}
    assert {"test_module_in_backbone_builds_runs_backward_and_counts", "test_every_module_derives_a_search_space",
            "test_every_module_fits_some_backbone_and_refuses_others_with_one_error",
            "test_every_module_trains_to_finite_values_in_its_cheapest_backbone"} <= kinds
    assert sum("builds_runs_backward" in line for line in passed) >= 5, "in every backbone family"
