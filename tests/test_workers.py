"""Several workers on one study: claims, no point twice, a SIGKILLed worker's trial run again; SQLite and journal.

`shared_session` takes a storage URL; tests/test_postgres.py runs it against PostgreSQL. Three
Python processes (as on three machines) share one storage: A runs the grid then the search,
B the grid and C the search, with a fake measurement that sleeps so that a kill lands mid-trial.
B and C are SIGKILLed in their first trial; A must finish both studies, running their trials
again. Started `elsewhere`, B and C pretend to be other machines: then only their stopped
heartbeats can tell A that they died (SQL storages); otherwise their dead pids do (any storage).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from attnbench.config.ablation import parse_ablation
from attnbench.config.point import Point
from attnbench.core.errors import ConfigError
from attnbench.run.runner import RunOptions
from attnbench.search import open_search_study, parse_search, run_search, tally
from attnbench.store.grid import run_grid
from attnbench.store.processes import run_in_workers
from attnbench.store.study import attach_point, open_study, trial_rows
from attnbench.store.workers import claim, holds_point, keep_claim, last_trial_number

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
GRID = {
    "name": "shared",
    "backbones": [{"name": "cifar_resnet18", "input_size": 8, "num_classes": 10}],
    "variants": [{"module": "se", "grid": {"reduction": [4, 8, 16, 32]}}, {"module": "eca", "grid": {"kernel_size": [3, 5, 7]}}],
}
SEARCH = {
    **GRID, "name": "shared",
    "search": {"objectives": ["macs", "params"], "sampler": "random", "trials": 6,
               "modules": {"se": {"reduction": {"low": 2, "high": 64, "log": True}}, "eca": {"kernel_size": {}}}},
}
TRIAL_SECONDS = 0.3  # long enough for the test to kill a worker mid-trial


def fake_measure(point: Point, *_: object, **__: object) -> dict:
    """MACs and parameters that differ by point (a formula, not a model: fast and exact)."""
    hp = point.hyperparameters
    extra = 64 // hp["reduction"] if point.attention == "se" else (hp.get("kernel_size") or 1) if point.attention == "eca" else 0
    return {"macs": 1000 + 10 * extra, "params": 500 + extra * extra}


def worker_main(role: str, storage: str, folder: str, host: str) -> None:
    """One worker process: wait for the go signal, then run its part, logging each trial's start and end."""
    import socket

    import attnbench.store.backends.rdb

    attnbench.store.backends.rdb.HEARTBEAT_SECONDS = 1  # grace period 2 s: a dead worker elsewhere is found quickly
    if host != "here":
        socket.gethostname = lambda: host  # another machine: its pid means nothing here, only its heartbeat counts
    log = Path(folder) / "trials.log"

    def logged(kind: str):
        def measure(point: Point, *_: object, **__: object) -> dict:
            with log.open("a") as out:
                out.write(f"start {kind} {point.key} {os.getpid()} {time.time()}\n")
            time.sleep(TRIAL_SECONDS)
            with log.open("a") as out:
                out.write(f"done {kind} {point.key} {os.getpid()} {time.time()}\n")
            return fake_measure(point)
        return measure

    with log.open("a") as out:
        out.write(f"ready - - {os.getpid()} {time.time()}\n")
    while not (Path(folder) / "go").exists():
        time.sleep(0.02)
    if role in ("grid", "both"):
        run_grid(parse_ablation(GRID), storage, RunOptions(device="cpu"), progress=False, run=logged("grid"))
    if role in ("search", "both"):
        run_search(parse_search(parse_ablation(SEARCH)), storage, RunOptions(device="cpu"), progress=False,
                   run=logged("search"), poll=0.2)


def start_workers(storage: str, folder: Path, roles: dict[str, str]) -> dict[str, subprocess.Popen]:
    """Start one worker per role (role -> host) and release them together once all have imported everything."""
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_workers; test_workers.worker_main(*sys.argv[1:])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = {role: subprocess.Popen([sys.executable, "-c", code, role, storage, str(folder), host], env=env)
               for role, host in roles.items()}
    deadline = time.time() + 60
    while len(log_lines(folder, "ready")) < len(workers):
        assert time.time() < deadline and all(w.poll() is None for w in workers.values()), "workers did not start"
        time.sleep(0.05)
    (folder / "go").touch()
    return workers


def log_lines(folder: Path, word: str, kind: str | None = None) -> list[tuple[str, int, float]]:
    """(point key, pid, time) of the log lines with this word (and kind of study)."""
    log = folder / "trials.log"
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return [(key, int(pid), float(at)) for w, k, key, pid, at in lines if w == word and kind in (None, k)]


def kill_mid_trial(worker: subprocess.Popen, folder: Path, kind: str) -> tuple[str, float]:
    """SIGKILL the worker while one of its trials runs; return that trial's point key and the time of death."""
    deadline = time.time() + 60
    while time.time() < deadline:
        running = Counter(key for key, pid, _ in log_lines(folder, "start", kind) if pid == worker.pid)
        running.subtract(key for key, pid, _ in log_lines(folder, "done", kind) if pid == worker.pid)
        under_way = [key for key, count in running.items() if count > 0]
        if under_way:  # its measurement sleeps TRIAL_SECONDS: the kill lands inside it
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            return under_way[0], time.time()
        time.sleep(0.01)
    raise AssertionError("the worker never started a trial")


def shared_session(storage: str, folder: Path, elsewhere: bool) -> None:
    """A, B and C share a grid and a search; B and C die mid-trial; every grid point is done once, the search finishes."""
    other = ("machine-b", "machine-c") if elsewhere else ("here", "here")
    workers = start_workers(storage, folder, {"both": "here", "grid": other[0], "search": other[1]})
    try:
        grid_key, grid_death = kill_mid_trial(workers["grid"], folder, "grid")
        _, search_death = kill_mid_trial(workers["search"], folder, "search")
        assert workers["both"].wait(timeout=90) == 0
    finally:
        for worker in workers.values():
            worker.kill()  # a failed run must not leave workers behind
    check_grid(storage, folder, grid_key, grid_death, elsewhere)
    check_search(storage, folder, search_death, elsewhere)


def check_grid(storage: str, folder: Path, killed: str, death: float, elsewhere: bool) -> None:
    points = {p.key for p in parse_ablation(GRID).points}
    trials = open_study("shared", storage).get_trials()
    complete = Counter(t.user_attrs["point_key"] for t in trials if t.state == TrialState.COMPLETE)
    assert set(complete) == points and set(complete.values()) == {1}, "every point completed exactly once"
    starts = Counter(key for key, _, _ in log_lines(folder, "start", "grid"))
    assert set(starts) == points and starts[killed] == 2, "the killed point is measured again"
    assert all(n == 1 for key, n in starts.items() if key != killed), "no other point is measured twice"
    again = [at for key, pid, at in log_lines(folder, "start", "grid") if key == killed]
    assert max(again) > death, "taken over only after its worker died"
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["point_key"] for t in failed] == [killed]
    # Found by its dead pid on this machine, or by its stopped heartbeat when it pretended to be elsewhere.
    assert failed[0].user_attrs.get("error", "") == ("" if elsewhere else "interrupted: the process running it died")
    assert all("claim_lost_to" in t.user_attrs for t in trials if t.state == TrialState.PRUNED)


def check_search(storage: str, folder: Path, death: float, elsewhere: bool) -> None:
    setup = parse_search(parse_ablation(SEARCH))
    study = open_search_study(setup, storage)
    finished, running, waiting = tally(study)
    # Two workers that both see one trial left may both start it (Optuna's documented race): at most one over.
    assert setup.trials <= finished <= setup.trials + 1 and running == waiting == 0
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and (failed[0].user_attrs["owner"]["host"] == "machine-c") == elsewhere
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, "queued again with its parameters, then run"
    assert retries[0].params == failed[0].params and retries[0].user_attrs["point_key"] == failed[0].user_attrs["point_key"]
    assert retries[0].datetime_start.timestamp() > death - 1 and "error" not in retries[0].user_attrs
    assert retries[0].values == [float(v) for v in fake_measure(Point.from_dict(retries[0].user_attrs["point"])).values()]


@pytest.mark.slow
def test_sqlite_three_workers_two_killed_elsewhere(tmp_path: Path) -> None:
    shared_session(f"sqlite:///{tmp_path / 'store.db'}", tmp_path, elsewhere=True)


@pytest.mark.slow
def test_journal_three_workers_two_killed(tmp_path: Path) -> None:
    shared_session(f"journal:{tmp_path / 'store.journal'}", tmp_path, elsewhere=False)


def test_claims_never_double_even_when_the_later_trial_checks_first(tmp_path: Path) -> None:
    """The interleaving that defeats "lowest number wins": B checks before A has written its claim."""
    storage = f"journal:{tmp_path / 'claims.journal'}"
    study = open_study("claims", storage)
    point = parse_ablation(GRID).points[1]
    since = last_trial_number(study)
    first = claim(study, point, since)
    assert first is not None and first.number == 0
    assert claim(study, point, since) is None, "a second claim on a held point is given up"
    lost = study.get_trials()[1]
    assert lost.state == TrialState.PRUNED and lost.user_attrs["claim_lost_to"] == 0
    # A asked for its trial first (number 2) but writes its point only after B (number 3) has checked.
    other = parse_ablation(GRID).points[2]
    a = study.ask()
    b = claim(study, other, since)
    assert b is not None and b.number == 3
    attach_point(a, other)
    assert not keep_claim(study, a, other, since), "A sees B's claim although B's number is higher, so A gives up"
    assert study.get_trials()[2].user_attrs["claim_lost_to"] == 3
    assert [t.number for t in study.get_trials() if holds_point(t, since)] == [0, 3]


def test_failures_hold_their_point_for_this_run_only(tmp_path: Path) -> None:
    storage = f"journal:{tmp_path / 'fail.journal'}"
    ablation = parse_ablation(GRID)

    def flaky(point, options):
        if point.attention == "eca":
            raise RuntimeError("simulated failure")
        return fake_measure(point)

    first = run_grid(ablation, storage, RunOptions(device="cpu"), progress=False, run=flaky)
    assert (first.completed, first.failed) == (5, 3), "each failing point is tried once, not again and again"
    second = run_grid(ablation, storage, RunOptions(device="cpu"), progress=False, run=lambda p, o: fake_measure(p))
    assert (second.completed, second.failed, second.skipped) == (3, 0, 5), "a new run retries earlier failures"
    assert {r["state"] for r in trial_rows(open_study("shared", storage))} == {"COMPLETE"}


@pytest.mark.slow
def test_run_grid_with_two_local_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers 2: this process and one spawned; together they measure each point once."""
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("ATTNBENCH_TEST_RENDEZVOUS", str(tmp_path / "rendezvous"))  # the spawned worker inherits it
    summary = run_grid(parse_ablation(GRID), storage, RunOptions(device="cpu"), progress=False, run=rendezvous_measure,
                       workers=2)
    assert (summary.total, summary.completed, summary.failed) == (8, 8, 0)
    trials = open_study("shared", storage).get_trials()
    complete = Counter(t.user_attrs["point_key"] for t in trials if t.state == TrialState.COMPLETE)
    assert len(complete) == 8 and set(complete.values()) == {1}
    assert len({t.user_attrs["owner"]["pid"] for t in trials if t.state == TrialState.COMPLETE}) == 2, "both measured"
    with pytest.raises(ConfigError, match="workers=0 is not allowed: a positive integer"):
        run_in_workers(run_grid, 0)


def rendezvous_measure(point: Point, options: RunOptions) -> dict:
    """Waits (a minute at most) until both workers have begun a point, so that both take part whatever their start-up."""
    folder = Path(os.environ["ATTNBENCH_TEST_RENDEZVOUS"])
    folder.mkdir(exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.time() + 60
    while len(list(folder.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return fake_measure(point)
