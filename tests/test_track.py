"""W&B mirror: the offline table holds every point and column, failures cost one warning, secrets never leave."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from attnbench.config.ablation import parse_ablation
from attnbench.core.paths import check_writable
from attnbench.report.tracking import StudyTracker, default_mode, flat_row, log_training_curve, redact, sanitize
from attnbench.run.runner import RunOptions
from attnbench.store.grid import run_grid
from attnbench.store.study import default_storage, open_study, trial_rows

SECRET = "hunter2"
STORAGE = f"postgresql://bob:{SECRET}@db.example:5432/attn"
TINY = {
    "name": "tiny",
    "backbones": [{"name": "cifar_resnet18", "input_size": 32, "num_classes": 10}],
    "variants": [{"module": "se", "grid": {"reduction": [8, 16]}}, {"module": "eca"}],
}


def fake_run(point, options) -> dict[str, Any]:
    """Distinct, checkable measurements per point; eca fails with a message that carries the secret URL."""
    if point.attention == "eca":
        raise RuntimeError(f"could not reach {STORAGE}")
    reduction = point.hyperparameters.get("reduction", 0)
    return {"params": 1000 + reduction, "macs": 2_000_000 + 10 * reduction, "attention_params": reduction,
            "macs_by_op/conv": 1_999_000, "uncounted_ops": "", "latency_median_ms": 1.5 + reduction / 100}


def table_files(results: Path) -> list[Path]:
    """The points tables an offline run wrote, in logging order (the step is in the file name)."""
    files = results.glob("wandb/offline-run-*/files/media/table/points_*.table.json")
    return sorted(files, key=lambda p: int(re.match(r"points_(\d+)_", p.name).group(1)))


@pytest.fixture(scope="module")
def offline_grid(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One real offline W&B run over a four-point grid (one point failing), the table refreshed after every point."""
    results = tmp_path_factory.mktemp("results")
    check_writable(results)
    storage = default_storage(results)
    tracker = StudyTracker("tiny", "offline", results, {"storage": STORAGE, "device": "cpu"}, refresh_s=0)
    started = time.perf_counter()
    run_grid(parse_ablation(TINY), storage, RunOptions(device="cpu"), progress=False, run=fake_run, on_point=tracker.on_point)
    rows = trial_rows(open_study("tiny", storage))
    where = tracker.finish(rows)
    return SimpleNamespace(results=results, rows=rows, where=where, tracker=tracker, seconds=time.perf_counter() - started)


def test_offline_table_has_one_row_per_point_and_every_column(offline_grid: SimpleNamespace) -> None:
    files = table_files(offline_grid.results)
    assert len(files) == 4 + 1  # refreshed after each of the 4 points (baseline, se x2, eca), then the final table
    table = json.loads(files[-1].read_text())
    columns, data = table["columns"], table["data"]
    assert len(data) == 4
    stored = {key for row in offline_grid.rows for key in row if key != "point_hyperparameters"}
    assert stored <= set(columns)  # every measured and point column
    assert {"hp/reduction", "hp/gate", "hp/bias", "hp/kernel_size", "delta_params", "delta_macs_pct"} <= set(columns)
    by_label = {row[columns.index("label")]: dict(zip(columns, row)) for row in data}
    assert by_label["se(reduction=8)"]["params"] == 1008 and by_label["se(reduction=8)"]["hp/reduction"] == 8
    assert by_label["se"]["macs_by_op/conv"] == 1_999_000 and by_label["se"]["latency_median_ms"] == pytest.approx(1.66)
    assert by_label["se"]["stages"] == "[2,3,4,5]"  # lists become JSON text, so every column has one type
    assert by_label["eca"]["state"] == "FAIL" and by_label["eca"]["params"] is None
    assert by_label["none"]["delta_params"] == 0 and by_label["se"]["delta_params"] == 16
    # the refreshes grow with the grid: the first table held the first finished point only
    assert len(json.loads(files[0].read_text())["data"]) == 1
    assert offline_grid.where.startswith("W&B offline run in ") and "wandb sync" in offline_grid.where


def test_storage_secret_never_reaches_wandb(offline_grid: SimpleNamespace) -> None:
    run_dir = next(offline_grid.results.glob("wandb/offline-run-*"))
    written = b"".join(p.read_bytes() for p in run_dir.rglob("*") if p.is_file())
    assert SECRET.encode() not in written
    assert b"postgresql://***@db.example" in written  # the redacted URL is there: the search looked in the right place
    error = next(r for r in offline_grid.rows if r["label"] == "eca")["error"]
    assert SECRET in error  # the store keeps the raw message; only W&B gets it redacted


def test_wandb_overhead_is_small_and_console_clean(offline_grid: SimpleNamespace, capfd: pytest.CaptureFixture) -> None:
    # import + init + 4 table logs + finish, measured on the fixture's run (a few seconds at most on 2 cores)
    assert offline_grid.tracker.seconds < 20
    assert offline_grid.tracker.enabled
    assert capfd.readouterr().err == ""


def test_a_wandb_failure_is_one_warning_and_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    import wandb

    def broken_init(**kwargs: Any) -> None:
        raise ConnectionError(f"no network for {STORAGE}\nsecond line")

    monkeypatch.setattr(wandb, "init", broken_init)
    storage = default_storage(tmp_path)
    tracker = StudyTracker("tiny", "online", tmp_path, {"storage": STORAGE}, refresh_s=0)
    with warnings.catch_warnings():  # Python warnings from the store's libraries are not what is counted here
        warnings.simplefilter("ignore")
        summary = run_grid(parse_ablation(TINY), storage, RunOptions(device="cpu"), progress=False, run=fake_run,
                           on_point=tracker.on_point)
    assert tracker.finish(trial_rows(open_study("tiny", storage))) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: W&B table logging failed (ConnectionError: no network")
    assert SECRET not in err[0] and "measurements are safe" in err[0]
    assert (summary.completed, summary.failed) == (3, 1)
    assert {r["label"]: r["params"] for r in trial_rows(open_study("tiny", storage)) if r["state"] == "COMPLETE"} == {
        "none": 1000, "se(reduction=8)": 1008, "se": 1016}


def test_wandb_missing_is_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    tracker = StudyTracker("s", "offline", tmp_path, refresh_s=0)
    tracker.log_points([{"label": "none", "attention": "none", "backbone": "b", "input_size": 32, "batch_size": 1,
                         "num_classes": 10, "params": 1}])
    tracker.log_training_curve("none", [{"epoch": 1, "val_top1": 10.0}])
    assert tracker.finish() is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ModuleNotFoundError" in err[0]  # a subclass of ImportError


def test_disabled_mode_never_touches_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    tracker = StudyTracker("s", "disabled", tmp_path, refresh_s=0)
    tracker.log_points([{"params": 1}], force=True)
    assert tracker.finish([{"params": 1}]) is None
    assert capsys.readouterr().err == "" and not (tmp_path / "wandb").exists()


class FakeRun:
    """Records what a W&B run was given."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs, self.logged, self.finished = kwargs, [], False
        self.dir, self.summary = str(Path(kwargs["dir"]) / "run" / "files"), {}

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


def test_training_curve_is_a_run_grouped_by_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    runs: list[FakeRun] = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(FakeRun(**kw)) or runs[-1])
    epochs = [{"epoch": 1, "train_loss": 2.0, "val_top1": 30.0, "val_top5": None},
              {"epoch": 2, "train_loss": 1.5, "val_top1": 41.5, "val_top5": None}]
    log_training_curve("default", "se(reduction=8)", epochs, results_dir=tmp_path, config={"storage": STORAGE, "lr": 0.1})
    (run,) = runs
    assert (run.kwargs["group"], run.kwargs["name"], run.kwargs["job_type"]) == ("default", "se(reduction=8)", "train")
    assert run.kwargs["settings"].mode == "offline" and run.kwargs["dir"] == str(tmp_path)
    assert run.kwargs["config"] == {"study": "default", "point": "se(reduction=8)",
                                    "storage": "postgresql://***@db.example:5432/attn", "lr": 0.1}
    assert run.logged == [(1, {"train_loss": 2.0, "val_top1": 30.0}), (2, {"train_loss": 1.5, "val_top1": 41.5})]
    assert run.finished


def test_refresh_is_throttled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    runs: list[FakeRun] = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(FakeRun(**kw)) or runs[-1])
    monkeypatch.setattr(wandb, "Table", lambda columns, data, allow_mixed_types: (columns, data))
    tracker = StudyTracker("s", "offline", tmp_path, refresh_s=3600)
    rows = [{"attention": "none", "backbone": "b", "input_size": 32, "batch_size": 1, "num_classes": 10, "params": 5}]
    for _ in range(5):
        tracker.log_points(rows)
    tracker.finish(rows)
    (run,) = runs
    assert len(run.logged) == 2 and run.finished  # the first table, then the final one; none in between


@pytest.mark.parametrize("text,expected", [
    ("postgresql://bob:hunter2@db:5432/attn", "postgresql://***@db:5432/attn"),
    ("postgresql+psycopg2://bob:p@ss:w0rd@db/attn", "postgresql+psycopg2://***@db/attn"),
    ("redis://:hunter2@cache:6379/0", "redis://***@cache:6379/0"),
    ("failed: mysql://u:hunter2@h/d (timeout)", "failed: mysql://***@h/d (timeout)"),
    ("https://host/path?user=a&password=hunter2&x=1", "https://host/path?user=a&password=***&x=1"),
    ("sqlite:///results/attnbench.db", "sqlite:///results/attnbench.db"),
    ("journal:results/a.journal", "journal:results/a.journal"),
    ("https://user@host/x", "https://***@host/x"),
])
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_sanitize_hides_secret_keys_and_urls_at_any_depth() -> None:
    clean = sanitize({"storage": STORAGE, "api_key": "abc", "nested": {"urls": [STORAGE], "WANDB_TOKEN": "t"}, "n": 3})
    assert SECRET not in json.dumps(clean) and "abc" not in json.dumps(clean)
    assert clean["n"] == 3 and clean["nested"]["urls"] == ["postgresql://***@db.example:5432/attn"]


def test_flat_row_spreads_hyperparameters_and_makes_cells_scalar() -> None:
    row = flat_row({"label": "msca", "point_hyperparameters": {"scales": (7, 11), "base_kernel": 5},
                    "stages": [1, 2], "macs": float("nan"), "error": STORAGE, "ok": True})
    assert row == {"label": "msca", "hp/scales": "[7,11]", "hp/base_kernel": 5, "stages": "[1,2]", "macs": None,
                   "error": "postgresql://***@db.example:5432/attn", "ok": True}


def test_default_mode_follows_wandb_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert default_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert default_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # not one of ours: the safe default
    assert default_mode() == "offline"


def test_bad_mode_is_a_config_error(tmp_path: Path) -> None:
    from attnbench.core.errors import ConfigError

    with pytest.raises(ConfigError, match="wandb='onlin'"):
        StudyTracker("s", "onlin", tmp_path)


NETWORK_PROBE = """
import socket, sys
from pathlib import Path

def hook(event, args):
    if event == "socket.getaddrinfo" or (event == "socket.connect" and args[0].family != socket.AF_UNIX):
        print("NETWORK", event, args[:2], file=sys.stderr, flush=True)

sys.addaudithook(hook)
from attnbench.report.tracking import StudyTracker

tracker = StudyTracker("probe", "offline", Path(sys.argv[1]), {"storage": "sqlite:///x.db"}, refresh_s=0)
tracker.log_points([{"label": "none", "attention": "none", "backbone": "b", "input_size": 32, "batch_size": 1,
                     "num_classes": 10, "params": 1}])
tracker.log_training_curve("none", [{"epoch": 1, "val_top1": 10.0}])
print(tracker.finish())
"""


@pytest.mark.slow  # a fresh interpreter, so that what wandb does at exit is watched too
def test_offline_mode_never_touches_the_network(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    probe = subprocess.run([sys.executable, "-c", NETWORK_PROBE, str(tmp_path)], env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert "NETWORK" not in probe.stderr, probe.stderr
    assert probe.stdout.startswith("W&B offline run in ")
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 2  # the points table's run and the training curve's


def test_a_failing_refresh_never_stops_the_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    import attnbench.report.tracking as track

    def unreadable(study: Any) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(track, "trial_rows", unreadable)
    tracker = StudyTracker("tiny", "offline", tmp_path, refresh_s=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_grid(parse_ablation(TINY), default_storage(tmp_path), RunOptions(device="cpu"), progress=False,
                           run=fake_run, on_point=tracker.on_point)
    assert (summary.completed, summary.failed) == (3, 1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "OSError: disk I/O error" in err[0]


WANDB_VARIABLES = ("WANDB_DIR", "WANDB_MODE", "WANDB_DISABLED", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP",
                   "WANDB_RUN_ID", "WANDB_NAME")
ONE_ROW = [{"label": "none", "attention": "none", "backbone": "b", "input_size": 32, "batch_size": 1, "num_classes": 10,
            "params": 1}]


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> list[FakeRun]:
    """wandb.init and wandb.Table replaced by recorders, and no WANDB_* variable set: the runs started, in order."""
    import wandb

    for name in WANDB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    runs: list[FakeRun] = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(FakeRun(**kw)) or runs[-1])
    monkeypatch.setattr(wandb, "Table", lambda columns, data, allow_mixed_types: (columns, data))
    return runs


def test_without_wandb_variables_runs_stay_offline_under_results(fake_wandb: list[FakeRun], tmp_path: Path) -> None:
    tracker = StudyTracker("study", default_mode(), tmp_path / "results", refresh_s=0)
    tracker.log_points(ONE_ROW)
    tracker.log_training_curve("none", [{"epoch": 1, "val_top1": 10.0}])
    assert tracker.finish().startswith(f"W&B offline run in {tmp_path / 'results' / 'run'}")
    for run in fake_wandb:
        assert run.kwargs["dir"] == str(tmp_path / "results") and run.kwargs["settings"].mode == "offline"
        assert (run.kwargs["project"], run.kwargs["group"]) == ("attnbench", "study")
        assert "entity" not in run.kwargs and "id" not in run.kwargs  # wandb's own defaults
    assert [r.kwargs["job_type"] for r in fake_wandb] == ["grid", "train"]


def test_wandb_variables_choose_where_runs_go_and_are_filed(fake_wandb: list[FakeRun], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere" / "runs"  # not there yet: made before wandb starts
    monkeypatch.setenv("WANDB_DIR", str(elsewhere))
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    monkeypatch.setenv("WANDB_ENTITY", "my-lab")
    monkeypatch.setenv("WANDB_RUN_GROUP", "ablation-7")
    monkeypatch.setenv("WANDB_MODE", "online")
    tracker = StudyTracker("study", default_mode(), tmp_path / "results", refresh_s=0)
    tracker.log_points(ONE_ROW)
    tracker.log_training_curve("none", [{"epoch": 1, "val_top1": 10.0}])
    tracker.finish()
    assert elsewhere.is_dir() and not (tmp_path / "results").exists()
    for run in fake_wandb:
        assert run.kwargs["dir"] == str(elsewhere) and run.kwargs["settings"].mode == "online"
        assert (run.kwargs["project"], run.kwargs["entity"], run.kwargs["group"]) == ("my-project", "my-lab", "ablation-7")


def test_an_explicit_mode_wins_over_wandb_mode(fake_wandb: list[FakeRun], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    tracker = StudyTracker("study", "offline", tmp_path, refresh_s=0)  # what --wandb offline passes
    tracker.log_points(ONE_ROW)
    assert fake_wandb[0].kwargs["settings"].mode == "offline"


def test_a_wandb_run_id_is_not_shared_by_the_harness_runs(fake_wandb: list[FakeRun], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    monkeypatch.setenv("WANDB_NAME", "one-name")
    tracker = StudyTracker("study", "offline", tmp_path, refresh_s=0)
    tracker.log_points(ONE_ROW)
    tracker.log_training_curve("se seed 0", [{"epoch": 1, "val_top1": 10.0}])
    tracker.log_training_curve("se seed 1", [{"epoch": 1, "val_top1": 11.0}])
    ids = [run.kwargs["id"] for run in fake_wandb]
    assert len(set(ids)) == 3 and "abc123" not in ids
    assert [run.kwargs["name"] for run in fake_wandb] == ["study", "se seed 0", "se seed 1"]


@pytest.mark.parametrize("variables,mode", [
    ({}, "offline"), ({"WANDB_MODE": "online"}, "online"), ({"WANDB_MODE": "run"}, "online"),
    ({"WANDB_MODE": "dryrun"}, "offline"), ({"WANDB_MODE": "bogus"}, "offline"),
    ({"WANDB_DISABLED": "true"}, "disabled"), ({"WANDB_DISABLED": "true", "WANDB_MODE": "online"}, "disabled"),
    ({"WANDB_DISABLED": "false", "WANDB_MODE": "online"}, "online"),
])
def test_default_mode_follows_the_standard_variables(variables: dict[str, str], mode: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in WANDB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert default_mode() == mode


def test_a_real_offline_run_lands_under_wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in WANDB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    tracker = StudyTracker("study", "offline", tmp_path / "results", refresh_s=0)
    tracker.log_points(ONE_ROW)
    where = tracker.finish()
    (run,) = list((tmp_path / "wandb-home" / "wandb").glob("offline-run-*"))
    assert where == f"W&B offline run in {run}; upload with: wandb sync {run}"
    assert list(run.glob("files/media/table/points_*.table.json")) and not (tmp_path / "results" / "wandb").exists()
