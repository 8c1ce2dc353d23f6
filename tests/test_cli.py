"""End to end through `python bench.py`: the grid, exports, resume after SIGKILL, and every bad-input case."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from attnbench.cli import main
from attnbench.config.ablation import parse_ablation
from attnbench.run.runner import RunOptions
from attnbench.store.grid import run_grid
from attnbench.store.study import default_storage, open_study, trial_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "backbones": [{"name": "cifar_resnet18", "input_size": 32, "num_classes": 10}],
    "variants": [{"module": "se", "grid": {"reduction": [8, 16]}}, {"module": "eca"}, {"module": "dcn"}],
}


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_grid_end_to_end_then_skips_done_points(tmp_path: Path) -> None:
    grid = write(tmp_path / "tiny.yaml", TINY)
    first = bench("--grid", str(grid), "--results", "out", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "5 measured, 0 already done, 0 failed" in first.stderr
    assert "| se(reduction=8)" in first.stdout and "ΔMACs %" in first.stdout
    frame = pd.read_csv(tmp_path / "out" / "tiny" / "points.csv")
    assert len(frame) == 5 and set(frame["state"]) == {"COMPLETE"}
    assert frame.loc[frame["attention"] == "none", "delta_macs"].iloc[0] == 0
    assert (frame.loc[frame["attention"] != "none", "delta_params"] > 0).all()
    assert frame["uncounted_ops"].isna().all()
    assert (tmp_path / "out" / "tiny" / "table.md").read_text().count("\n") == 5 + 2
    second = bench("--grid", str(grid), "--results", "out", "--quiet", cwd=tmp_path)
    assert second.returncode == 0 and "0 measured, 5 already done" in second.stderr


def _completed(db: Path) -> int:
    try:
        with sqlite3.connect(db) as connection:
            return connection.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_resume_after_sigkill_loses_nothing(tmp_path: Path) -> None:
    grid = write(tmp_path / "kill.yaml", {
        "name": "kill", "backbones": [{"name": "resnet50", "input_size": 224}],
        "variants": [{"module": "se", "grid": {"reduction": [4, 8, 16, 32]}}],
    })
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), "--grid", str(grid), "--results", "out", "--quiet"],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "out" / "attnbench.db"
    deadline = time.time() + 120
    while _completed(db) < 1 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = _completed(db)
    assert 1 <= done_before < 5, "the kill should land mid-grid"
    study = open_study("kill", default_storage(tmp_path / "out"))
    before = {t.number: t.user_attrs["point_key"] for t in study.get_trials() if t.state.name == "COMPLETE"}
    resumed = bench("--grid", str(grid), "--results", "out", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{5 - done_before} measured, {done_before} already done" in resumed.stderr
    trials = open_study("kill", default_storage(tmp_path / "out")).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 5 and len({t.user_attrs["point_key"] for t in complete}) == 5
    assert {t.number: t.user_attrs["point_key"] for t in complete if t.number in before} == before
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["error"].startswith("interrupted") for t in interrupted)


def test_a_failing_point_is_recorded_and_the_grid_goes_on(tmp_path: Path) -> None:
    ablation = parse_ablation(TINY)
    storage = default_storage(tmp_path)

    def flaky(point, options):
        if point.attention == "eca":
            raise RuntimeError("CUDA out of memory (simulated)")
        return {"macs": 1.0, "params": 2}

    summary = run_grid(ablation, storage, RunOptions(device="cpu"), progress=False, run=flaky)
    assert (summary.completed, summary.failed) == (4, 1)
    rows = {row["label"]: row for row in trial_rows(open_study("tiny", storage))}
    assert rows["eca"]["state"] == "FAIL" and "out of memory" in rows["eca"]["error"]
    assert rows["se"]["state"] == "COMPLETE"


BAD_GRIDS = {
    "unknown module": ({**TINY, "variants": [{"module": "sse"}]}, "variants[0].attention='sse'"),
    "unknown backbone": ({**TINY, "backbones": ["resnet19"]}, "backbones[0].backbone='resnet19'"),
    "unknown hyperparameter": ({**TINY, "variants": [{"module": "se", "grid": {"ratio": [4]}}]}, "variants[0].ratio=4"),
    "even kernel": ({**TINY, "variants": [{"module": "cbam", "grid": {"spatial_kernel": [4]}}]}, "variants[0].spatial_kernel=4"),
    "reduction above channels": ({**TINY, "variants": [{"module": "se", "grid": {"reduction": [100]}}]},
                                 "variants[0].reduction=100"),
    "missing stage": ({**TINY, "variants": [{"module": "dcn", "stages": [3, 7]}]}, "variants[0].stages=7"),
    "malformed yaml": ("name: x\nvariants: [ {module: se\n", "ablation file="),
}


@pytest.fixture(scope="module")
def measured_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results directory holding one measured grid (baseline + eca), shared by the bad-input cases."""
    root = tmp_path_factory.mktemp("store")
    good = bench("--grid", str(write(root / "good.yaml", {**TINY, "variants": [{"module": "eca"}]})),
                 "--results", "out", "--quiet", cwd=root)
    assert good.returncode == 0, good.stderr
    return root


@pytest.mark.parametrize("case", BAD_GRIDS)
def test_bad_input_is_one_line_and_exit_2_and_keeps_the_store(
    measured_store: Path, case: str, capsys: pytest.CaptureFixture
) -> None:
    data, needle = BAD_GRIDS[case]
    grid = write(measured_store / f"bad-{case.replace(' ', '-')}.yaml", data)
    status = main(["--grid", str(grid), "--results", str(measured_store / "out")])
    stderr = capsys.readouterr().err
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr and needle in lines[0], stderr
    assert "allowed" in lines[0]
    assert len(trial_rows(open_study("tiny", default_storage(measured_store / "out")))) == 2  # nothing lost


def test_bad_input_through_the_real_entry_point(measured_store: Path) -> None:
    """The same contract as seen from a shell: exit status 2, one line, no traceback."""
    grid = write(measured_store / "bad.yaml", BAD_GRIDS["malformed yaml"][0])
    bad = bench("--grid", str(grid), "--results", "out", cwd=measured_store)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("bench.py: error: ablation file=") and len(bad.stderr.strip().splitlines()) == 1


def test_unwritable_results_and_unavailable_device(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid = write(tmp_path / "tiny.yaml", TINY)
    (tmp_path / "afile").write_text("")
    cases = [(["--results", str(tmp_path / "afile" / "sub")], "bench.py: error: results="),
             (["--device", "tpu"], "device='tpu'")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "device='cuda'"))
    for extra, needle in cases:
        # a later --results overrides the first, as argparse keeps the last value
        assert main(["--grid", str(grid), "--results", str(tmp_path / "out"), *extra]) == 2
        stderr = capsys.readouterr().err
        assert needle in stderr and len(stderr.strip().splitlines()) == 1


def test_list_shows_modules_and_backbones(tmp_path: Path) -> None:
    listing = bench("--list", cwd=tmp_path)
    assert listing.returncode == 0
    for text in ("reduction", "spatial_kernel", "deformable_groups", "scales", "resnet50", "cifar_resnet18", "identity"):
        assert text in listing.stdout
