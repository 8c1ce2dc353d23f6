"""Grids that time, measure memory, profile and train: what lands in the store, and bad settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attnbench.cli import main
from attnbench.config.ablation import parse_ablation
from attnbench.run.runner import options_for
from attnbench.store.grid import run_grid
from attnbench.store.study import default_storage, open_study, trial_rows

SMALL = {"name": "small", "backbones": [{"name": "cifar_resnet20", "input_size": 16, "num_classes": 10}],
         "variants": [{"module": "se"}]}


def test_latency_memory_and_slots_land_in_the_store(tmp_path: Path) -> None:
    ablation = parse_ablation({**SMALL, "channels_last": [False, True],
                               "measure": {"latency": {"warmup": 1, "repeats": 5}, "memory": True}})
    storage = default_storage(tmp_path)
    summary = run_grid(ablation, storage, options_for(ablation, "cpu"), progress=False)
    assert (summary.completed, summary.failed) == (4, 0)
    rows = trial_rows(open_study("small", storage))
    for row in rows:
        assert row["latency_samples"] == 5 and row["latency_p10_ms"] <= row["latency_median_ms"] <= row["latency_p90_ms"]
        assert row["memory_train_peak_bytes"] > row["memory_inference_peak_bytes"] > 0
        assert row["env/torch_version"] and row["env/threads"] >= 1 and row["device"] == "cpu"
        slots = [k for k in row if k.startswith("slot/") and k.endswith("/latency_ms")]
        assert len(slots) == 9  # one per block of ResNet-20, identity slots included
    se = next(r for r in rows if r["attention"] == "se" and not r["channels_last"])
    assert se["slot/layer2.0.attention/shape"] == "32x8x8"
    assert se["attention_latency_ms"] > 0


def test_training_grid_reports_epochs_to_the_trial(tmp_path: Path) -> None:
    ablation = parse_ablation({
        "name": "trained", "backbones": [{"name": "cifar_resnet20", "input_size": 8, "num_classes": 10}],
        "variants": [{"module": "eca"}],
        "train": {"data": {"dataset": "digits", "image_size": 8}, "seeds": [0, 1], "epochs": 2, "batch_size": 128,
                  "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.05},
    })
    storage = default_storage(tmp_path)
    summary = run_grid(ablation, storage, options_for(ablation, "cpu"), progress=False)
    assert summary.completed == 2
    study = open_study("trained", storage)
    for trial in study.get_trials():
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]  # seed 0: epochs 1-2, seed 1: steps 3-4
        result = trial.user_attrs["result"]
        assert result["seeds"] == 2 and len(result["train_curves"]) == 2
        seeds = result["top1_seeds"]
        assert result["top1_mean"] == pytest.approx(sum(seeds) / 2)
        assert trial.intermediate_values[2] == pytest.approx(seeds[0]) and trial.intermediate_values[4] == pytest.approx(seeds[1])


def test_profile_flag_writes_traces(tmp_path: Path) -> None:
    grid = tmp_path / "p.yaml"
    grid.write_text(yaml.safe_dump({**SMALL, "variants": [{"module": "eca"}]}))
    assert main(["--grid", str(grid), "--results", str(tmp_path / "out"), "--profile", "--quiet", "--wandb", "disabled"]) == 0
    traces = list((tmp_path / "out" / "small" / "profiles").glob("*/*.pt.trace.json"))
    assert len(traces) == 2


TRAIN = {"data": {"dataset": "digits", "image_size": 16}, "seeds": [0], "epochs": 1}
BAD = {
    "missing data directory": ({"data": {"dataset": "cifar10", "data_dir": "/nonexistent/cifar", "image_size": 16}},
                               "train.data.data_dir='/nonexistent/cifar'"),
    "epochs zero": ({**TRAIN, "epochs": 0}, "train.epochs=0"),
    "split larger than the data": ({**TRAIN, "data": {"dataset": "digits", "image_size": 16, "val_split": 5000}},
                                   "val_split=5000"),
    "image size the backbone cannot take": ({**TRAIN, "data": {"dataset": "digits", "image_size": 32}},
                                            "train.data.image_size=32"),
    "unknown option": ({**TRAIN, "epoch": 3}, "train.epoch=3"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_training_settings_stop_before_training(tmp_path: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    train, needle = BAD[case]
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump({**SMALL, "train": train}))
    assert main(["--grid", str(grid), "--results", str(tmp_path / "out"), "--wandb", "disabled"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    db = tmp_path / "out" / "attnbench.db"
    assert not db.exists() or not trial_rows(open_study("small", default_storage(tmp_path / "out")))


@pytest.mark.parametrize("measure,needle", [
    ({"latency": {"compile_mode": "fastest"}}, "measure.latency.compile_mode='fastest'"),
    ({"latency": {"cuda_graphs": True}}, "measure.latency.cuda_graphs=True"),
    ({"latency": {"repeat": 3}}, "measure.latency.repeat=3"),
    ({"memory": "yes"}, "measure.memory='yes'"),
])
def test_bad_measure_settings(tmp_path: Path, measure: dict, needle: str, capsys: pytest.CaptureFixture) -> None:
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump({**SMALL, "measure": measure}))
    assert main(["--grid", str(grid), "--results", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
