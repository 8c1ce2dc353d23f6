"""One contract every storage backend passes: studies, claims, resume, dead workers, keep-alives, retries, errors.

The suite runs once per registered backend (attnbench.store.backends), each giving its own test URL;
PostgreSQL's comes from ATTNBENCH_TEST_POSTGRES_URL (set by .ci/run) and skips, saying so, without it.
A new backend is covered the moment it is registered.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState

from attnbench.config.ablation import parse_ablation
from attnbench.config.point import Point
from attnbench.core.errors import ConfigError
from attnbench.run.runner import RunOptions
from attnbench.search import open_search_study, parse_search
from attnbench.store.backends import BACKENDS
from attnbench.store.grid import run_grid
from attnbench.store.owners import LEASE, OWNER
from attnbench.store.storage import ask, open_storage, retry_callback
from attnbench.store.study import done_keys, open_study, trial_rows
from attnbench.store.workers import claim, heartbeat_interval, keep_alive, last_trial_number, reap, recover

GRID = {"name": "contract", "backbones": [{"name": "cifar_resnet20", "input_size": 8, "num_classes": 10}],
        "variants": [{"module": "se", "grid": {"reduction": [4, 8]}}]}


def fake(point: Point, options: RunOptions) -> dict:
    return {"macs": 100 + point.hyperparameters.get("reduction", 0), "params": 10}


@pytest.fixture(params=[backend.scheme for backend in BACKENDS])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store of each backend, for one test."""
    url = BACKENDS.get(request.param, "storage").test_url(tmp_path)
    if url is None:
        pytest.skip(f"{request.param} NOT TESTED: {BACKENDS.get(request.param, 'storage').untested_because}")
    return url


def fresh(name: str) -> str:
    """A study name no other test (or earlier run on a shared server) used."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_a_study_round_trips_its_trials(storage: str) -> None:
    name = fresh("roundtrip")
    study = open_study(name, storage, for_writing=True)
    trial = ask(study)
    trial.set_user_attr("result", {"macs": 1})
    study.tell(trial, 1.0)
    again = open_study(name, storage)
    assert [t.user_attrs["result"] for t in again.get_trials()] == [{"macs": 1}]


def test_grid_runs_once_and_resumes_without_measuring_again(storage: str) -> None:
    ablation = parse_ablation({**GRID, "name": fresh("resume")})
    first = run_grid(ablation, storage, RunOptions(device="cpu"), progress=False, run=fake)
    assert (first.completed, first.failed) == (3, 0)
    second = run_grid(ablation, storage, RunOptions(device="cpu"), progress=False, run=fake)
    assert (second.completed, second.skipped) == (0, 3)
    study = open_study(ablation.name, storage)
    assert done_keys(study) == {p.key for p in ablation.points}
    assert {r["state"] for r in trial_rows(study)} == {"COMPLETE"}


def test_a_held_point_cannot_be_claimed_twice(storage: str) -> None:
    ablation = parse_ablation({**GRID, "name": fresh("claims")})
    study = open_study(ablation.name, storage)
    since = last_trial_number(study)
    point = ablation.points[1]
    assert claim(study, point, since) is not None
    assert claim(study, point, since) is None
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert len(pruned) == 1 and "claim_lost_to" in pruned[0].user_attrs


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_dead_workers_trial_is_failed_and_its_point_taken_again(storage: str) -> None:
    ablation = parse_ablation({**GRID, "name": fresh("dead")})
    study = open_study(ablation.name, storage)
    trial = ask(study)
    trial.set_user_attr(OWNER, {"host": socket.gethostname(), "pid": _dead_pid(), "start": None})
    trial.set_user_attr("point", ablation.points[1].to_dict())
    trial.set_user_attr("point_key", ablation.points[1].key)
    assert recover(study) == 1
    failed = study.get_trials()[0]
    assert failed.state == TrialState.FAIL and failed.user_attrs["error"].startswith("interrupted")
    summary = run_grid(ablation, storage, RunOptions(device="cpu"), progress=False, run=fake)
    assert summary.completed == 3, "the interrupted point is measured again"


def test_a_running_trial_shows_it_is_alive_and_elsewhere_dies_when_silent(storage: str) -> None:
    study = open_study(fresh("alive"), storage)
    trial = ask(study)
    with keep_alive(study, trial):
        frozen = study._storage.get_trial(trial._trial_id)
        if heartbeat_interval(study) is None:
            assert frozen.user_attrs[LEASE] > time.time()  # a lease on stores without heartbeats
        else:
            assert study._storage._get_stale_trial_ids(study._study_id) == []  # a fresh heartbeat
    other = ask(study)
    other.set_user_attr(OWNER, {"host": "another-machine", "pid": 1, "start": None})
    if heartbeat_interval(study) is None:
        other.set_user_attr(LEASE, time.time() - 1)  # its owner stopped renewing
        assert recover(study) == 1
    else:
        assert recover(study) == 0, "another machine's trial without a stale heartbeat is alive"


def test_a_search_trial_of_a_dead_worker_is_queued_again(storage: str) -> None:
    data = {**GRID, "name": fresh("retry"), "search": {"objectives": ["macs"], "sampler": "random", "trials": 2,
                                                      "modules": {"se": {"reduction": [4, 8]}}}}
    setup = parse_search(parse_ablation(data))
    study = open_search_study(setup, storage)
    trial = ask(study)
    trial.set_user_attr(OWNER, {"host": socket.gethostname(), "pid": _dead_pid(), "start": None})
    assert reap(study, retry_callback()) == 1
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING], "queued again with the same parameters"


def test_a_url_it_cannot_use_is_one_config_error(storage: str) -> None:
    scheme = storage.split(":", 1)[0]
    broken = {"sqlite": "sqlite://", "journal": "journal:", "postgresql": "postgresql://u:p@127.0.0.1:99999/db"}
    with pytest.raises(ConfigError) as error:
        open_storage(broken[scheme.split("+")[0]])
    assert error.value.key == "storage"
