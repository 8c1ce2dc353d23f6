"""Runs that fail, numbers as people write them, bounds, and comparisons an out-of-memory retry could corrupt.

Issue 9, items 7 (input size), 8 (exit status), 9 (1e-3) and 11 (OOM deltas).
"""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from hostile import assert_one_line_refusal, completed_rows, write

from attnbench.cli import main
from attnbench.config.ablation import parse_ablation
from attnbench.measure.memory import with_oom_retry
from attnbench.report.tables import comparison_table, points_frame
from attnbench.run.runner import options_for

BACKBONES = [{"name": "cifar_resnet20", "input_size": 8, "num_classes": 10}]
# one optimizer step per epoch on a tiny synthetic set: training in a second or two
TINY_TRAIN = {"data": {"dataset": "synthetic", "image_size": 8, "synthetic_samples": 100, "num_workers": 0,
                       "augment": False},
              "epochs": 1, "batch_size": 80, "seeds": [0]}


def grid_args(grid: Path, results: Path, *more: str) -> list[str]:
    return ["--grid", str(grid), "--results", str(results), "--wandb", "disabled", "--quiet", *more]


def earlier_rows(results: Path) -> list[tuple]:
    return [row for row in completed_rows(results / "attnbench.db") if row[0] == "earlier"]


def stored_results(db: Path, study: str) -> list[dict]:
    with sqlite3.connect(db) as connection:
        values = connection.execute(
            "select value_json from trial_user_attributes join trials using (trial_id) join studies using (study_id) "
            "where study_name = ? and key = 'result'", (study,)).fetchall()
    return [json.loads(value) for (value,) in values]


# --- exit status (item 8) -----------------------------------------------------------------------------------------


def test_a_run_whose_points_fail_exits_1_naming_how_many_and_which(tmp_path: Path, results: Path, capsys) -> None:
    """A real run-time failure: a learning rate of 1e30 diverges in the first step (and is a number, item 9)."""
    before = earlier_rows(results)
    grid = write(tmp_path / "diverge.yaml", {"name": "diverge", "backbones": BACKBONES, "variants": ["none"],
                                             "train": {**TINY_TRAIN, "lr": "1e30"}})
    status = main(grid_args(grid, results))
    err = capsys.readouterr().err
    assert status == 1, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bench.py: 1 of 1 points failed in this run"), last
    assert last.endswith(": cifar_resnet20 none"), last
    assert str(results / "diverge" / "points.csv") in last
    frame = pd.read_csv(results / "diverge" / "points.csv")
    assert list(frame["state"]) == ["FAIL"] and "non-finite" in frame["error"].iloc[0]
    assert earlier_rows(results) == before


def test_a_run_whose_points_all_complete_exits_0(tmp_path: Path, results: Path, capsys) -> None:
    grid = write(tmp_path / "fine.yaml", {"name": "fine", "backbones": BACKBONES, "variants": ["se"]})
    assert main(grid_args(grid, results)) == 0
    assert "bench.py:" not in capsys.readouterr().err


# --- numbers as people write them (item 9) ------------------------------------------------------------------------


def test_lr_and_weight_decay_written_like_1e_3_train(tmp_path: Path, results: Path, capsys) -> None:
    """PyYAML reads `lr: 1e-3` and `weight_decay: 5e-4` (no dot) as strings; they are numbers all the same."""
    text = (
        "name: numbers\n"
        "backbones: [{name: cifar_resnet20, input_size: 8, num_classes: 10}]\n"
        "variants: [none]\n"
        "train:\n"
        "  data: {dataset: synthetic, image_size: 8, synthetic_samples: 100, num_workers: 0, augment: false}\n"
        "  epochs: 1\n  batch_size: 80\n  seeds: [0]\n"
        "  lr: 1e-3\n  weight_decay: 5e-4\n")
    import yaml

    assert yaml.safe_load(text)["train"]["lr"] == "1e-3", "the premise: YAML gives a string"
    grid = write(tmp_path / "numbers.yaml", text)
    before = earlier_rows(results)
    status = main(grid_args(grid, results))
    err = capsys.readouterr().err
    assert status == 0, err
    assert "Traceback" not in err and "not a number" not in err
    [result] = stored_results(results / "attnbench.db", "numbers")
    assert result["train_curves"][0][-1]["lr"] == pytest.approx(1e-3), "trained at the learning rate written"
    assert earlier_rows(results) == before


def test_real_numbers_as_strings_wherever_a_float_goes() -> None:
    options = options_for(parse_ablation({
        "name": "numbers", "backbones": BACKBONES, "variants": ["se"],
        "measure": {"latency": {"min_time_s": "1e-2", "warmup": 1, "repeats": 2}},
        "train": {"data": {"dataset": "synthetic", "image_size": 8, "val_split": "2e-1", "max_in_memory_mb": "1e3"},
                  "epochs": 2, "lr": "1e-3", "weight_decay": "5e-4", "label_smoothing": "1e-1", "grad_clip": "1e1",
                  "warmup_epochs": "5e-1"},
    }), "cpu")
    config, data = options.train.config, options.train.data
    assert (config.lr, config.weight_decay, config.label_smoothing, config.grad_clip, config.warmup_epochs) == \
        (1e-3, 5e-4, 0.1, 10.0, 0.5)
    assert (data.val_split, data.max_in_memory_mb) == (0.2, 1000.0)


@pytest.mark.parametrize("value, words", [("fast", "a number > 0"), ("1e-3x", "a number > 0"), ("nan", "a number > 0")])
def test_strings_that_are_not_numbers_are_still_refused(tmp_path: Path, results: Path, capsys, value: str,
                                                        words: str) -> None:
    grid = write(tmp_path / "words.yaml", {"name": "words", "backbones": BACKBONES, "variants": ["none"],
                                           "train": {**TINY_TRAIN, "lr": value}})
    before = completed_rows(results / "attnbench.db")
    status = main(grid_args(grid, results))
    assert_one_line_refusal(capsys, status, "train.lr=", words)
    assert completed_rows(results / "attnbench.db") == before


# --- input size bound (item 7) -------------------------------------------------------------------------------------


def test_an_input_size_no_machine_can_take_is_refused_before_any_point(tmp_path: Path, results: Path, capsys) -> None:
    grid = write(tmp_path / "huge.yaml", {"name": "huge", "variants": ["se"],
                                          "backbones": [{"name": "cifar_resnet20", "input_size": 100000,
                                                         "num_classes": 10}]})
    before = completed_rows(results / "attnbench.db")
    status = main(grid_args(grid, results))
    assert_one_line_refusal(capsys, status, "input_size=100000", "at most")
    assert completed_rows(results / "attnbench.db") == before


# --- out-of-memory retries and deltas (item 11) --------------------------------------------------------------------


def _row(attention: str, latency: float, used: int, **more) -> dict:
    return {"backbone": "resnet50", "input_size": 224, "batch_size": 32, "num_classes": 1000, "dtype": "fp32",
            "channels_last": False, "attention": attention, "label": attention, "state": "COMPLETE", "error": "",
            "params": 25.5e6 + (0 if attention == "none" else 1e5), "attention_params": 0 if attention == "none" else 1e5,
            "macs": 4.1e9, "flops": 8.3e9, "latency_median_ms": latency, "latency_iqr_ms": 1.0,
            "batch_size_used": used, **more}


def test_no_latency_delta_between_rows_timed_at_different_batches() -> None:
    frame = points_frame([_row("none", 100.0, 32), _row("se", 60.0, 16), _row("eca", 110.0, 32)])
    by = frame.set_index("attention")
    assert math.isnan(by.at["se", "delta_latency_median_ms"]) and math.isnan(by.at["se", "delta_latency_median_ms_pct"])
    assert by.at["eca", "delta_latency_median_ms_pct"] == pytest.approx(10.0), "same batch: a delta as before"
    assert by.at["se", "delta_note"] == "no Δlatency: measured at batch 16, the baseline at 32 (out-of-memory retry)"
    assert by.at["se", "delta_params"] == pytest.approx(1e5), "counts do not depend on the batch"
    table = comparison_table(frame).set_index("variant")
    assert table.at["se", "Δlatency %"] == "" and table.at["eca", "Δlatency %"] == "+10.0"
    assert "out-of-memory retry" in table.at["se", "note"] and table.at["eca", "note"] == ""


def test_no_delta_when_the_baseline_was_the_one_retried() -> None:
    frame = points_frame([_row("none", 50.0, 8), _row("se", 110.0, 32)]).set_index("attention")
    assert math.isnan(frame.at["se", "delta_latency_median_ms"])
    assert frame.at["se", "delta_note"] == "no Δlatency: measured at batch 32, the baseline at 8 (out-of-memory retry)"


def test_no_memory_delta_between_rows_measured_at_different_batches() -> None:
    frame = points_frame([_row("none", 100.0, 32, memory_train_peak_bytes=4e9, memory_batch_size_used=32),
                          _row("se", 101.0, 32, memory_train_peak_bytes=3e9, memory_batch_size_used=16)])
    by = frame.set_index("attention")
    assert by.at["se", "delta_latency_median_ms"] == pytest.approx(1.0)
    assert math.isnan(by.at["se", "delta_memory_train_peak_bytes"])
    assert "no Δmemory: measured at batch 16, the baseline at 32" in by.at["se", "delta_note"]
    table = comparison_table(frame).set_index("variant")
    assert table.at["se", "Δtrain peak %"] == ""


def test_rows_stored_before_batch_size_used_existed_keep_their_deltas() -> None:
    rows = [_row("none", 100.0, 32), _row("se", 110.0, 32)]
    for row in rows:
        del row["batch_size_used"]
    frame = points_frame(rows).set_index("attention")
    assert frame.at["se", "delta_latency_median_ms_pct"] == pytest.approx(10.0) and "delta_note" not in frame


def test_the_latex_table_shows_no_latency_delta_between_rows_timed_at_different_batches() -> None:
    from attnbench.report.latex import latex_table

    tex = latex_table(points_frame([_row("none", 100.0, 32), _row("se", 60.0, 16)]), "oom")
    se = next(line for line in tex.splitlines() if line.startswith("se "))
    assert "-40.0" not in se, se


def _oom_policy(options):
    """The runner's out-of-memory policy (RunOptions.shared; RunOptions.measure before the measurement registry)."""
    return getattr(options, "shared", None) or options.measure


def test_oom_retry_false_keeps_every_point_at_its_own_batch() -> None:
    data = {"name": "fixed", "backbones": BACKBONES, "variants": ["se"], "batch_sizes": [8]}
    retried = _oom_policy(options_for(parse_ablation(data), "cpu"))
    fixed = _oom_policy(options_for(parse_ablation({**data, "measure": {"oom_retry": False}}), "cpu"))
    assert retried.floor_for(8) == 1 and fixed.floor_for(8) == 8
    assert _oom_policy(options_for(parse_ablation({**data, "measure": {"oom_floor": 4}}), "cpu")).floor_for(8) == 4

    def fits_at_two(batch: int) -> int:
        if batch > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch

    halved = with_oom_retry(fits_at_two, 8, retried.floor_for(8))
    assert (halved.batch_size, halved.attempts, halved.oom) == (2, (8, 4, 2), False)
    kept = with_oom_retry(fits_at_two, 8, fixed.floor_for(8))
    assert (kept.attempts, kept.oom) == ((8,), True), "no halving: the point fails at its own batch"


def test_oom_retry_must_be_true_or_false(tmp_path: Path, results: Path, capsys) -> None:
    grid = write(tmp_path / "retry.yaml", {"name": "retry", "backbones": BACKBONES, "variants": ["se"],
                                           "measure": {"oom_retry": "no"}})
    status = main(grid_args(grid, results))
    assert_one_line_refusal(capsys, status, "measure.oom_retry=", "true (halve the batch on out-of-memory) or false")
