"""Point keys depend only on what differs from the defaults: new hyperparameters or axes re-measure nothing."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attnbench.config.ablation import parse_ablation
from attnbench.config.point import Point, make_point
from attnbench.modules import get_module_entry, registry
from attnbench.modules.hparams import Int, Schema
from attnbench.run.runner import RunOptions
from attnbench.store.grid import run_grid
from attnbench.store.study import open_study, trial_point_key

GRID = {"name": "keys", "backbones": [{"name": "cifar_resnet20", "input_size": 8, "num_classes": 10}],
        "variants": [{"module": "se", "grid": {"reduction": [4, 8]}}, "eca"]}


def with_extra_hyperparameter(monkeypatch: pytest.MonkeyPatch, module: str, name: str, default: int) -> None:
    """The registry as a later version might have it: `module` with one more hyperparameter."""
    entry = registry.get_module_entry(module)
    schema = Schema({**entry.schema.params, name: Int(default, low=1, high=100)})
    monkeypatch.setitem(registry.MODULES._entries, module, dataclasses.replace(entry, schema=schema))


def fake(point: Point, options: RunOptions) -> dict:
    return {"macs": 1, "params": 1}


def test_a_key_names_only_what_differs_from_the_defaults() -> None:
    assert make_point("resnet18", "se").key_fields() == {"key_version": 2, "backbone": "resnet18", "attention": "se"}
    fields = make_point("resnet18", "se", {"reduction": 8}, stages=[4, 5], batch_size=2, dtype="bf16").key_fields()
    assert fields == {"key_version": 2, "backbone": "resnet18", "attention": "se", "hyperparameters": {"reduction": 8},
                      "stages": [4, 5], "batch_size": 2, "dtype": "bf16"}


def test_a_new_hyperparameter_and_a_new_axis_measure_no_stored_point_again(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    storage = f"journal:{tmp_path / 'keys.journal'}"
    first = run_grid(parse_ablation(GRID), storage, RunOptions(device="cpu"), progress=False, run=fake)
    assert first.completed == 4
    # A later version: se gains a hyperparameter with a default...
    with_extra_hyperparameter(monkeypatch, "se", "extra", default=7)
    # ...and the store's points predate an axis (as rows stored before dtype and channels_last existed).
    study = open_study("keys", storage)
    for trial in study.get_trials():
        point = dict(trial.user_attrs["point"])
        assert trial_point_key(trial) == Point.from_dict(point).key
    second = run_grid(parse_ablation(GRID), storage, RunOptions(device="cpu"), progress=False, run=fake)
    assert (second.completed, second.skipped) == (0, 4), "nothing stored is measured again"
    assert get_module_entry("se").schema.defaults()["extra"] == 7


def test_stores_keyed_by_version_1_resume_without_measuring_again(tmp_path: Path) -> None:
    """Version 1 hashed every field; such trials are matched through their stored points."""
    storage = f"journal:{tmp_path / 'v1.journal'}"
    ablation = parse_ablation(GRID)
    study = open_study("keys", storage)
    for point in ablation.points:
        trial = study.ask()
        stored = point.to_dict()
        del stored["dtype"], stored["channels_last"]  # version 1 stores predate these axes
        trial.set_user_attr("point", stored)
        trial.set_user_attr("point_key", "v1-" + point.key[:12])  # any other derivation
        study.tell(trial, 1.0)
    summary = run_grid(ablation, storage, RunOptions(device="cpu"), progress=False, run=fake)
    assert (summary.completed, summary.skipped) == (0, len(ablation.points))
    assert dataclasses.asdict(Point.from_dict(stored)) == dataclasses.asdict(ablation.points[-1])
