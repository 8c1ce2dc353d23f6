"""Workers that die, signals to the parent, trials of other hosts and reused pids: no hang, no orphan (issue 9, 3-4).

Every run here is a real `python bench.py` subprocess with a deadline (a run that hangs fails
the test instead of hanging it), and every process it starts is killed in `finally`. The
measurements are real: a small grid whose latency section makes each point take about a second.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = [{"name": "cifar_resnet20", "input_size": 8, "num_classes": 10}]
# Twelve points in four comparison groups (one per batch size), each point about a second: the latency rounds run
# until min_time_s of samples is measured. Enough that a spawned worker, which imports torch first (seconds, more on
# a loaded machine), still finds work; several groups, as a grid with paired timing gives out whole groups.
SLOW = {"name": "slow", "backbones": BACKBONES, "batch_sizes": [1, 2, 3, 4],
        "variants": [{"module": "se", "grid": {"reduction": [4]}}, {"module": "eca", "grid": {"kernel_size": [3]}}],
        "measure": {"latency": {"warmup": 1, "repeats": 5, "min_time_s": 1.0, "slots": False}}}
ONE = {"name": "one", "backbones": BACKBONES, "variants": ["none"]}  # one point, measured in well under a second
DEADLINE_S = 180  # no run here takes a tenth of this; past it, it hangs


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


class Bench:
    """A `bench.py` subprocess carrying a marker in its environment, so every process it starts can be found."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.marker = f"attnbench-test-{uuid.uuid4().hex}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTNBENCH_TEST_MARKER": self.marker,
               "PYTHONUNBUFFERED": "1"}
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, str(ROOT / "bench.py"), *args], cwd=folder, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out = self.err = ""

    def wait(self, timeout: float = DEADLINE_S) -> int:
        try:
            self.out, self.err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.out, self.err = self.process.communicate()
            raise AssertionError(f"bench.py hung for {timeout} s: {self.err[-3000:]}") from None
        self.seconds = time.perf_counter() - self.started
        return self.process.returncode

    def processes(self) -> list[int]:
        """Live (non-zombie) processes carrying this run's marker: the parent, its workers, anything they started."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                marked = self.marker.encode() in (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marked and state not in ("Z", "X"):
                found.append(int(entry.name))
        return found

    def kill(self) -> None:
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def spawned_children(parent: int) -> list[int]:
    """The worker processes `parent` started (multiprocessing's spawn; not its resource tracker)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"multiprocessing.spawn" in command and b"spawn_main" in command:
            children.append(int(entry.name))
    return children


def running_owners(storage: str, study: str) -> dict[int, int]:
    """{trial number: owner pid} of the study's RUNNING trials that hold a point, read without writing."""
    if storage.startswith("sqlite:///"):
        import sqlite3

        path = storage.removeprefix("sqlite:///")
        if not Path(path).exists():
            return {}
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as connection:
                rows = connection.execute(
                    "select t.number, a.value_json from trials t join studies s using (study_id) "
                    "join trial_user_attributes a using (trial_id) "
                    "where s.study_name = ? and t.state = 'RUNNING' and a.key = 'owner' and exists "
                    "(select 1 from trial_user_attributes p where p.trial_id = t.trial_id and p.key = 'point')",
                    (study,)).fetchall()
        except sqlite3.Error:
            return {}
        return {number: json.loads(owner)["pid"] for number, owner in rows}
    path = storage.removeprefix("journal:")
    if not Path(path).exists():
        return {}
    try:
        loaded = optuna.load_study(study_name=study, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(path)))
    except Exception:  # not created yet
        return {}
    return {t.number: t.user_attrs["owner"]["pid"] for t in loaded.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if "point" in t.user_attrs and "owner" in t.user_attrs}


def wait_for(condition, what: str, timeout: float = 120.0, bench: Bench | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if bench is not None and bench.process.poll() is not None:
            raise AssertionError(f"bench.py ended before {what}: {bench.process.communicate()[1][-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def complete_per_point(storage: str, study: str) -> Counter:
    from attnbench.store.study import open_study, trial_point_key

    trials = open_study(study, storage).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return Counter(trial_point_key(t) for t in trials)


def grid_keys(data: dict) -> set[str]:
    from attnbench.config.ablation import parse_ablation

    return {p.key for p in parse_ablation(data).points}


@pytest.fixture
def benches() -> Iterator[list[Bench]]:
    """Every Bench a test starts; whatever is left of them is killed afterwards, pass or fail."""
    started: list[Bench] = []
    yield started
    for bench in started:
        bench.kill()
        if bench.process.poll() is None:
            bench.process.kill()
        bench.process.communicate()


def _storage(kind: str, folder: Path) -> str:
    return f"journal:{folder / 'store.journal'}" if kind == "journal" else f"sqlite:///{folder / 'store.db'}"


# --- a SIGKILLed child (item 3) --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_sigkilled_worker_child_costs_one_point_not_a_hang(tmp_path: Path, benches: list[Bench], kind: str) -> None:
    grid = write(tmp_path / "slow.yaml", SLOW)
    keys = grid_keys(SLOW)

    calm_dir = tmp_path / "calm"
    calm_dir.mkdir()
    calm = Bench(calm_dir, "--grid", str(grid), "--storage", _storage(kind, calm_dir), "--results", "out",
                 "--workers", "2", "--quiet", "--wandb", "disabled")
    benches.append(calm)
    assert calm.wait() == 0, calm.err
    assert set(complete_per_point(_storage(kind, calm_dir), "slow").values()) == {1}

    hit_dir = tmp_path / "hit"
    hit_dir.mkdir()
    storage = _storage(kind, hit_dir)
    hit = Bench(hit_dir, "--grid", str(grid), "--storage", storage, "--results", "out", "--workers", "2", "--quiet",
                "--wandb", "disabled")
    benches.append(hit)
    [child] = wait_for(lambda: spawned_children(hit.process.pid), "the worker child to start", bench=hit)
    # mid-point: the child owns a RUNNING trial holding a point (each takes about a second)
    number = wait_for(lambda: next((n for n, pid in running_owners(storage, "slow").items() if pid == child), None),
                      "the child to run a point", bench=hit)
    time.sleep(0.3)
    held = {n for n, pid in running_owners(storage, "slow").items() if pid == child}
    assert number in held, "the kill must land mid-point"
    os.kill(child, signal.SIGKILL)
    status = hit.wait()
    assert status == 0, hit.err
    assert "Traceback" not in hit.err
    assert hit.seconds < calm.seconds + 30, (hit.seconds, calm.seconds)

    complete = complete_per_point(storage, "slow")
    assert set(complete) == keys and set(complete.values()) == {1}, "every point exactly once"
    from attnbench.store.study import open_study

    failed = [t for t in open_study("slow", storage).get_trials() if t.state == TrialState.FAIL]
    # the trials the child held when it died (one point, or the rest of a comparison group it had claimed whole)
    assert number in {t.number for t in failed} and {t.number for t in failed} <= held | {number}
    assert {t.user_attrs["error"] for t in failed} == {
        f"interrupted: the process running it died (worker pid {child} killed by signal 9 (SIGKILL))"}
    wait_for(lambda: not hit.processes(), "every process of the run to end with it", timeout=10)


# --- SIGTERM to the parent (item 4) ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_to_the_parent_stops_every_worker_and_writes_the_exports(tmp_path: Path, benches: list[Bench]) -> None:
    grid = write(tmp_path / "slow.yaml", SLOW)
    storage = _storage("sqlite", tmp_path)
    run = Bench(tmp_path, "--grid", str(grid), "--storage", storage, "--results", "out", "--workers", "2", "--quiet",
                "--wandb", "disabled")
    benches.append(run)
    [child] = wait_for(lambda: spawned_children(run.process.pid), "the worker child to start", bench=run)
    owners = wait_for(lambda: (o := running_owners(storage, "slow")) and set(o.values()) == {run.process.pid, child}
                      and o, "both workers to run a point", bench=run)
    os.kill(run.process.pid, signal.SIGTERM)
    status = run.wait(timeout=60)
    assert status == 143, run.err
    assert "Traceback" not in run.err
    assert run.err.strip().splitlines()[-1].startswith("bench.py: stopped by SIGTERM"), run.err
    # multiprocessing's resource tracker ends a moment after the parent; a worker would not end at all
    wait_for(lambda: not run.processes(), "no attnbench process to outlive the parent", timeout=10)

    from attnbench.store.study import open_study

    trials = {t.number: t for t in open_study("slow", storage).get_trials()}
    left = [(t.number, t.user_attrs.get("owner")) for t in trials.values() if t.state == TrialState.RUNNING]
    assert not left, f"trials left running: {left} (parent {run.process.pid}, child {child})"
    interrupted = {n: t.user_attrs["owner"]["pid"] for n, t in trials.items() if t.state == TrialState.FAIL}
    assert all(trials[n].user_attrs["error"] == "interrupted: Terminated" for n in interrupted)
    assert set(interrupted.values()) <= {run.process.pid, child} and interrupted, "the running trials, marked"
    for number in owners:  # running when the signal was sent: interrupted, unless it finished in that instant
        assert number in interrupted or trials[number].state == TrialState.COMPLETE
    points = tmp_path / "out" / "slow" / "points.csv"
    assert points.exists(), "the exports of what is done are written"
    import pandas as pd

    frame = pd.read_csv(points)
    done = sum(1 for t in trials.values() if t.state == TrialState.COMPLETE)
    assert (frame["state"] == "COMPLETE").sum() == done


# --- trials of other hosts and reused pids on the journal store (item 3) --------------------------------------------


def _foreign_trial(storage: str, data: dict, owner: dict, lease_expires: float | None) -> int:
    """A RUNNING trial that holds the grid's first point, written as another worker (another host, a dead pid) left it."""
    from attnbench.config.ablation import parse_ablation
    from attnbench.store.storage import open_storage

    point = parse_ablation(data).points[0]
    study = optuna.create_study(study_name=data["name"], storage=open_storage(storage), direction="minimize")
    trial = study.ask()
    for key, value in {"owner": owner, "point": point.to_dict(), "point_key": point.key,
                       "label": point.variant_label()}.items():
        trial.set_user_attr(key, value)
    if lease_expires is not None:
        trial.set_user_attr("lease_expires", lease_expires)
    return trial.number


def _process_start(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[19]


def _rerun(tmp_path: Path, benches: list[Bench], storage: str, *more: str) -> Bench:
    run = Bench(tmp_path, "--grid", str(write(tmp_path / "one.yaml", ONE)), "--storage", storage, "--results", "out",
                "--wandb", "disabled", *more)
    benches.append(run)
    return run


def _taken_over(storage: str, number: int) -> None:
    from attnbench.store.study import open_study

    trials = {t.number: t for t in open_study("one", storage).get_trials()}
    assert trials[number].state == TrialState.FAIL
    assert trials[number].user_attrs["error"] == "interrupted: the process running it died"
    assert set(complete_per_point(storage, "one").values()) == {1} and len(complete_per_point(storage, "one")) == 1


def test_a_journal_trial_of_another_host_whose_lease_ran_out_is_taken_over(tmp_path: Path, benches: list[Bench]) -> None:
    storage = f"journal:{tmp_path / 'store.journal'}"
    number = _foreign_trial(storage, ONE, {"host": "gone-container-7f3a", "pid": 4242, "start": "123"},
                            lease_expires=time.time() - 10)
    run = _rerun(tmp_path, benches, storage, "--quiet")
    assert run.wait(timeout=90) == 0, run.err
    assert "1 measured, 0 already done, 0 failed" in run.err
    _taken_over(storage, number)


def test_a_live_lease_of_another_host_is_waited_for_and_said_so(tmp_path: Path, benches: list[Bench]) -> None:
    storage = f"journal:{tmp_path / 'store.journal'}"
    expires = time.time() + 15
    number = _foreign_trial(storage, ONE, {"host": "busy-container-9c1d", "pid": 4242, "start": "123"},
                            lease_expires=expires)
    run = _rerun(tmp_path, benches, storage, "--quiet")
    assert run.wait(timeout=120) == 0, run.err
    assert "waiting for" not in run.out, "stdout carries the table only"
    told = [line.strip() for line in run.err.splitlines() if "waiting for" in line]
    assert len(told) == 1, run.err
    assert told[0].startswith(f"one: waiting for 1 point other workers run: trial {number} "
                              "(host busy-container-9c1d, pid 4242, lease runs out in "), told
    assert told[0].endswith(" s)")
    from attnbench.store.study import open_study

    [done] = [t for t in open_study("one", storage).get_trials() if t.state == TrialState.COMPLETE]
    assert done.datetime_start.timestamp() >= expires - 1, "taken over only once the lease ran out"
    _taken_over(storage, number)


def test_an_owner_whose_pid_was_reused_counts_as_dead(tmp_path: Path, benches: list[Bench]) -> None:
    """This host, a live pid (this test's own process), but another start time: the owner died and the pid came back."""
    storage = f"journal:{tmp_path / 'store.journal'}"
    start = _process_start(os.getpid())
    number = _foreign_trial(storage, ONE, {"host": socket.gethostname(), "pid": os.getpid(), "start": str(int(start) - 1)},
                            lease_expires=time.time() + 600)
    run = _rerun(tmp_path, benches, storage, "--quiet")
    assert run.wait(timeout=90) == 0, run.err
    _taken_over(storage, number)


def test_an_owner_that_is_a_zombie_counts_as_dead(tmp_path: Path, benches: list[Bench]) -> None:
    """A killed worker its parent has not reaped yet: the pid exists (state Z) but nothing runs the trial."""
    storage = f"journal:{tmp_path / 'store.journal'}"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.time() + 30
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.02)
        number = _foreign_trial(storage, ONE, {"host": socket.gethostname(), "pid": zombie.pid,
                                               "start": _process_start(zombie.pid)}, lease_expires=time.time() + 600)
        run = _rerun(tmp_path, benches, storage, "--quiet")
        assert run.wait(timeout=90) == 0, run.err
    finally:
        zombie.wait()
    _taken_over(storage, number)


def test_a_live_owner_on_this_host_is_not_taken_over(tmp_path: Path, benches: list[Bench]) -> None:
    """The control: this test's own process, with its true start time, runs the trial; the grid waits and says so."""
    storage = f"journal:{tmp_path / 'store.journal'}"
    number = _foreign_trial(storage, ONE, {"host": socket.gethostname(), "pid": os.getpid(),
                                           "start": _process_start(os.getpid())}, lease_expires=time.time() + 600)
    run = _rerun(tmp_path, benches, storage, "--quiet")
    told = wait_for(lambda: run.process.poll() is None and Path(f"/proc/{run.process.pid}").exists() and _waiting(run),
                    "the grid to say what it waits for", timeout=90, bench=run)
    assert f"trial {number} (host {socket.gethostname()}, pid {os.getpid()}" in told
    run.kill()
    run.process.wait(timeout=30)
    from attnbench.store.study import open_study

    assert open_study("one", storage).get_trials()[number].state == TrialState.RUNNING


def _waiting(run: Bench) -> str | None:
    """The 'waiting for' line of a running bench, read from its stderr without blocking."""
    import select

    stream = run.process.stderr
    while select.select([stream], [], [], 0)[0]:
        line = stream.readline()
        if not line:
            return None
        run.err += line
        if "waiting for" in line:
            return line
    return None


def test_an_interruption_right_after_a_claim_marks_the_claimed_trial(tmp_path: Path, monkeypatch, capsys) -> None:
    """Ctrl-C (or SIGTERM) landing after a point's trial is written but before its measurement begins."""
    import attnbench.store.workers as workers
    from attnbench.cli import main
    from attnbench.store.study import open_study

    claimed = workers.keep_claim

    def interrupted(study, trial, point, since):
        claimed(study, trial, point, since)
        raise KeyboardInterrupt  # what the signal handler raises, at the worst moment

    monkeypatch.setattr(workers, "keep_claim", interrupted)
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    status = main(["--grid", str(write(tmp_path / "one.yaml", ONE)), "--storage", storage, "--results",
                   str(tmp_path / "out"), "--wandb", "disabled", "--quiet"])
    err = capsys.readouterr().err
    assert status == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("bench.py: stopped by Ctrl-C"), err
    [trial] = open_study("one", storage).get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["error"] == "interrupted: KeyboardInterrupt"
    assert (tmp_path / "out" / "one" / "points.csv").exists()


def test_a_signal_during_the_writes_of_a_new_trial_acts_after_them() -> None:
    """A new trial and its owner record are written together: a Ctrl-C (or SIGTERM) in between waits for both."""
    from attnbench.store.processes import signals_held

    before = signal.getsignal(signal.SIGINT)
    written = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler would have run by now
            written.append("owner")
    assert written == ["owner"] and signal.getsignal(signal.SIGINT) is before


def test_marking_a_trial_interrupted_does_not_wait_on_the_read_the_interruption_cut(tmp_path: Path, monkeypatch) -> None:
    """A SIGTERM inside a store read leaves its cursor (SQLite's read lock) in the traceback: the write must not wait."""
    import sqlite3

    import attnbench.store.backends.sqlite as storage_module
    from attnbench.config.ablation import parse_ablation
    from attnbench.store.study import fail_trial, open_study, start_trial

    monkeypatch.setattr(storage_module, "SQLITE_BUSY_TIMEOUT_S", 3)  # without the release, fail_trial waits this long
    db = tmp_path / "store.db"
    study = open_study("one", f"sqlite:///{db}")
    trial = start_trial(study, parse_ablation(ONE).points[0])

    def reading() -> None:
        cursor = sqlite3.connect(db).execute("select * from trial_user_attributes")
        cursor.fetchone()  # under way: more rows to come, the statement holds SQLite's shared lock
        raise KeyboardInterrupt  # the signal lands here

    started = time.perf_counter()
    try:
        reading()
    except KeyboardInterrupt:
        fail_trial(study, trial, "interrupted: KeyboardInterrupt")
    assert time.perf_counter() - started < 3
    [stored] = open_study("one", f"sqlite:///{db}").get_trials()
    assert stored.state == TrialState.FAIL and stored.user_attrs["error"] == "interrupted: KeyboardInterrupt"
