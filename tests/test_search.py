"""Searches: spaces from the modules' declarations, objectives, budgets, pruning, the Pareto front, bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from attnbench.config.ablation import parse_ablation
from attnbench.core.errors import ConfigError
from attnbench.run.runner import RunOptions
from attnbench.search import Base, export_search, open_search_study, parse_search, parse_space, run_search
from attnbench.store.storage import redact
from attnbench.store.study import open_study
from attnbench.train import EpochRecord

ROOT = Path(__file__).resolve().parents[1]
BASE = Base("cifar_resnet18", 8, 1, 10)
BACKBONE = [{"name": "cifar_resnet18", "input_size": 8, "num_classes": 10}]
CPU = RunOptions(device="cpu")


def space_of(modules: dict, **placement) -> dict:
    """module -> {hyperparameter: distribution}, and the placement dimensions under their own names."""
    space = parse_space({"modules": modules, **placement}, BASE)
    found = {m: {hp: d.distribution for hp, d in space.dimensions[m]} for m in space.modules}
    found.update({d.name: d.distribution for d in (space.module, space.stages, space.position) if d is not None})
    return found


def test_integers_become_suggest_int_with_odd_steps_and_log_scales() -> None:
    space = space_of({"se": {"reduction": {"low": 4, "high": 32, "log": True}},
                      "cbam": {"spatial_kernel": {"low": 3, "high": 9}}, "dcn": {"kernel_size": {}}})
    assert space["se"]["reduction"] == IntDistribution(4, 32, log=True, step=1)
    assert space["cbam"]["spatial_kernel"] == IntDistribution(3, 9, step=2)  # odd kernels only: 3, 5, 7, 9
    assert space["dcn"]["kernel_size"] == IntDistribution(1, 7, step=2)  # {}: the module's declared range
    assert space["module"] == CategoricalDistribution(("se", "cbam", "dcn"))


def test_categoricals_cover_every_declared_value_or_the_listed_ones() -> None:
    space = space_of({"se": {"gate": {}, "bias": {}}, "msca": {"scales": {}}, "cbam": {"pool_types": {}},
                      "eca": {"kernel_size": {}}, "lka": {"dilation": [3, 1, 3]}}, stages=[[4, 5], [5, 4], [2, 3, 4, 5]])
    assert space["se"]["gate"].choices == ("sigmoid", "hard_sigmoid") and space["se"]["bias"].choices == (False, True)
    # Every non-empty subset of SegNeXt's strip scales (7, 11, 21): 2^3 - 1 branches combinations.
    assert space["msca"]["scales"].choices == ("7", "11", "21", "7,11", "7,21", "11,21", "7,11,21")
    assert len(space["cbam"]["pool_types"].choices) == 2 ** 4 - 1  # avg, max, lp, lse
    assert space["eca"]["kernel_size"].choices == (None, *range(1, 32, 2))  # adaptive, or any odd k up to 31
    assert space["lka"]["dilation"].choices == (3, 1)  # listed values, repeats dropped
    assert space["stages"].choices == ("4,5", "2,3,4,5")


def test_sampled_points_are_valid_and_decode_to_the_modules_values() -> None:
    space = parse_space({"modules": {"msca": {"scales": {}}, "se": {"reduction": {"low": 2, "high": 64, "log": True}},
                                     "none": {}}, "stages": "all"}, BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = [space.sample(study.ask()) for _ in range(60)]
    assert {p.attention for p in points} == {"msca", "se", "none"}
    scales = {p.hyperparameters["scales"] for p in points if p.attention == "msca"}
    assert scales <= {(7,), (11,), (21,), (7, 11), (7, 21), (11, 21), (7, 11, 21)} and len(scales) > 3
    assert all(2 <= p.hyperparameters["reduction"] <= 64 for p in points if p.attention == "se")
    assert all(p.stages == (2, 3, 4, 5) for p in points if p.attention == "none"), "the baseline has no placement axis"
    assert len({p.stages for p in points if p.attention != "none"}) > 5  # of the 15 non-empty stage subsets


BAD_SPACES = {
    "declared range too wide for the backbone": ({"se": {"reduction": {}}}, "search.modules.se.reduction.high=1024",
                                                 "at most the channel count 64"),
    "below the declared range": ({"se": {"reduction": {"low": 0, "high": 8}}}, "search.modules.se.reduction.low=0",
                                 "an integer in [1, 1024]"),
    "even kernel": ({"cbam": {"spatial_kernel": {"low": 4, "high": 8}}}, "search.modules.cbam.spatial_kernel.low=4",
                    "an odd integer in [1, 31]"),
    "log scale on odd kernels": ({"cbam": {"spatial_kernel": {"low": 3, "high": 9, "log": True}}},
                                 "search.modules.cbam.spatial_kernel.log=True", "takes odd values only"),
    "listed value too large": ({"se": {"reduction": [8, 100]}}, "search.modules.se.reduction[1]=100",
                               "at most the channel count"),
    "bad strip scale": ({"msca": {"scales": [[7, 8]]}}, "search.modules.msca.scales[0]=[7, 8]", "distinct odd integers"),
    "unknown hyperparameter": ({"se": {"ratio": [4]}}, "search.modules.se.ratio=[4]", "reduction, gate, bias"),
    "unknown module": ({"sse": {}}, "search.modules.sse='sse'", "one of"),
    "range on a choice": ({"se": {"gate": {"low": 1}}}, "search.modules.se.gate={'low': 1}", "ranges are for integers"),
    "low above high": ({"se": {"reduction": {"low": 16, "high": 8}}}, "search.modules.se.reduction.high=8", "at least low=16"),
}


@pytest.mark.parametrize("case", BAD_SPACES)
def test_a_range_outside_what_the_module_accepts_names_key_value_and_allowed(case: str) -> None:
    modules, where, allowed = BAD_SPACES[case]
    with pytest.raises(ConfigError) as error:
        parse_space({"modules": modules}, BASE)
    assert str(error.value).startswith(where + " is not allowed: ") and allowed in str(error.value)


def search_file(**search) -> dict:
    return {"name": "s", "backbones": BACKBONE, "search": {"modules": {"se": {"reduction": {"low": 2, "high": 64, "log": True}},
                                                                        "eca": {"kernel_size": [3, 5, 7, 9]}}, **search}}


BAD_SEARCHES = {
    "cmaes with two objectives": (search_file(objectives=["macs", "params"], sampler="cmaes"),
                                  "search.sampler='cmaes'", "a sampler for 2 objectives: tpe, nsga2, random"),
    "pruner with two objectives": (search_file(objectives=["macs", "params"], pruner="median"),
                                   "search.pruner='median'", "accuracy alone"),
    "accuracy without training": (search_file(objectives=["accuracy", "macs"]), "search.objectives=['accuracy', 'macs']",
                                  "add a `train:` section"),
    "budget on accuracy": (search_file(budgets={"accuracy": 90}), "search.budgets.accuracy=90", "upper bounds on: macs"),
    "unknown metric": (search_file(objectives=["speed"]), "search.objectives='speed'", "latency"),
    "unknown key": (search_file(sampelr="tpe"), "search.sampelr='tpe'", "not a known key"),
    "sampler option": (search_file(sampler={"name": "nsga2", "population": 1}), "search.sampler.population=1", ">= 2"),
    "two backbones": ({**search_file(), "backbones": [*BACKBONE, "resnet18"]}, "backbones=['cifar_resnet18', 'resnet18']",
                      "exactly one backbone"),
}


@pytest.mark.parametrize("case", BAD_SEARCHES)
def test_bad_search_sections(case: str) -> None:
    data, where, allowed = BAD_SEARCHES[case]
    with pytest.raises(ConfigError) as error:
        parse_search(parse_ablation(data))
    assert str(error.value).startswith(where + " is not allowed: ") and allowed in str(error.value)


def tradeoff(point, options: RunOptions = CPU, on_epoch=None) -> dict:
    """SE trades MACs for parameters as r grows (the whole SE line is a front); ECA's larger kernels cost both."""
    hp = point.hyperparameters
    if point.attention == "se":
        return {"macs": 1000 + 640 / hp["reduction"], "params": 500 + 3 * hp["reduction"]}
    return {"macs": 1000 + 10 * hp["kernel_size"], "params": 500 + hp["kernel_size"] ** 2}


def brute_force_front(frame: pd.DataFrame, names: list[str]) -> set[str]:
    """Non-dominated feasible completed points, by the definition (all <=, one <), written out independently."""
    done = frame[(frame["state"] == "COMPLETE") & frame["feasible"]].drop_duplicates("point_key")
    rows = done[["point_key", *names]].to_numpy().tolist()
    return {key for key, *values in rows
            if not any(all(o <= v for o, v in zip(other, values)) and other != values for _, *other in rows)}


def test_multi_objective_front_is_exported_as_csv_and_plot(tmp_path: Path) -> None:
    setup = parse_search(parse_ablation(search_file(objectives=["macs", "params"], sampler={"name": "nsga2", "population": 4},
                                                    seed=0, trials=16)))
    summary = run_search(setup, f"journal:{tmp_path / 'store.journal'}", CPU, run=tradeoff, progress=False)
    assert summary.ran == summary.completed + summary.reused == 16 and summary.finished == 16
    frame, front = export_search(open_search_study(setup, f"journal:{tmp_path / 'store.journal'}"), setup, tmp_path / "out")
    written = pd.read_csv(tmp_path / "out" / "pareto.csv")
    assert set(written["point_key"]) == brute_force_front(frame, ["macs", "params"]) == set(front["point_key"])
    assert len(written) >= 2 and list(written["macs"]) == sorted(written["macs"]), "a trade-off, cheapest MACs first"
    assert len(pd.read_csv(tmp_path / "out" / "trials.csv")) == 16
    png = (tmp_path / "out" / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_budgets_are_optuna_constraints_and_bound_the_front(tmp_path: Path) -> None:
    setup = parse_search(parse_ablation(search_file(objectives=["macs", "params"], sampler="random", seed=1, trials=14,
                                                    budgets={"macs": 1060})))
    storage = f"journal:{tmp_path / 'store.journal'}"
    run_search(setup, storage, CPU, run=tradeoff, progress=False)
    study = open_search_study(setup, storage)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        # Stored where Optuna's samplers read them: system attr constraints:<name>, feasible at <= 0.
        assert trial.system_attrs["constraints:macs"] == pytest.approx(trial.values[0] / 1060 - 1)
    frame, front = export_search(study, setup, tmp_path / "out")
    assert (~frame["feasible"]).any() and frame["feasible"].any(), "the budget splits this space"
    assert (front["macs"] <= 1060).all() and set(front["point_key"]) == brute_force_front(frame, ["macs", "params"])


def test_repeated_points_reuse_their_measurement(tmp_path: Path) -> None:
    calls = []

    def counting(point, options, on_epoch):
        calls.append(point.key)
        return tradeoff(point)

    data = search_file(objectives="macs", sampler="random", seed=0, trials=10)
    data["search"]["modules"] = {"eca": {"kernel_size": [3, 5]}}
    summary = run_search(parse_search(parse_ablation(data)), f"journal:{tmp_path / 's.journal'}", CPU, run=counting,
                         progress=False)
    assert len(calls) == len(set(calls)) == 2 and (summary.completed, summary.reused) == (2, 8)


def accuracy_file(pruner: dict) -> dict:
    data = search_file(objectives="accuracy", sampler={"name": "tpe", "startup_trials": 20}, seed=3, trials=12, pruner=pruner)
    return {**data, "train": {"epochs": 4}}


def fake_training(point, options: RunOptions, on_epoch) -> dict:
    """Accuracy grows with epochs at a rate set by the point, over two seeds; reported like the runner does."""
    rate = 5 + point.hyperparameters.get("reduction", point.hyperparameters.get("kernel_size", 1)) % 7
    for seed in range(2):
        for epoch in range(1, 5):
            on_epoch(seed, EpochRecord(epoch, 1.0, 1.0, rate * epoch - seed, None, 0.1, 0.0, 1.0))
    return {**tradeoff(point), "top1_mean": rate * 4 - 0.5}


@pytest.mark.parametrize("pruner", [{"name": "median", "startup_trials": 2}, {"name": "halving", "reduction_factor": 2}])
def test_pruners_stop_runs_on_per_epoch_accuracy(tmp_path: Path, pruner: dict) -> None:
    setup = parse_search(parse_ablation(accuracy_file(pruner)))
    storage = f"journal:{tmp_path / 'store.journal'}"
    summary = run_search(setup, storage, CPU, run=fake_training, progress=False)
    assert summary.pruned > 0 and summary.completed + summary.reused + summary.pruned == 12
    trials = open_search_study(setup, storage).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "same_as" not in t.user_attrs]
    assert complete and all(t.intermediate_values == {e: (t.values[0] + 0.5) / 4 * e for e in range(1, 5)} for t in complete)
    for trial in pruned:
        step = max(trial.intermediate_values)
        assert trial.user_attrs["pruned"].startswith(f"pruned after epoch {step} ")
        if pruner["name"] == "median":
            # MedianPruner: below the median, at the same epoch, of the trials completed before it.
            earlier = [t.intermediate_values[step] for t in complete if t.number < trial.number]
            assert len(earlier) >= 2 and trial.intermediate_values[step] < pd.Series(earlier).median()
        else:
            assert step in (1, 2, 4), "successive halving decides at rungs min_resource * 2**k"


def test_pruning_callback_reports_and_raises() -> None:
    from attnbench.search import pruning_callback

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=50.0))
    trial = study.ask()
    report = pruning_callback(trial)
    report(0, EpochRecord(1, 1.0, 1.0, 60.0, None, 0.1, 0.0, 1.0))
    report(1, EpochRecord(3, 1.0, 1.0, 10.0, None, 0.1, 0.0, 1.0))  # a later seed: not reported, not pruned
    with pytest.raises(optuna.TrialPruned, match="after epoch 2 at val top-1 40.00 %"):
        report(0, EpochRecord(2, 1.0, 1.0, 40.0, None, 0.1, 0.0, 1.0))
    assert study._storage.get_trial(trial._trial_id).intermediate_values == {1: 60.0, 2: 40.0}


def test_a_study_name_holding_other_objectives_or_a_grid_is_refused(tmp_path: Path) -> None:
    storage = f"journal:{tmp_path / 'store.journal'}"
    first = parse_search(parse_ablation(search_file(objectives=["macs", "params"], trials=2, sampler="random")))
    run_search(first, storage, CPU, run=tradeoff, progress=False)
    with pytest.raises(ConfigError, match=r"search.objectives=\['macs'\] is not allowed: \['macs', 'params'\] as in the "
                                          r"existing study 's-search', or a new search.study name"):
        open_search_study(parse_search(parse_ablation(search_file(objectives=["macs"]))), storage)
    narrower = search_file(objectives=["macs", "params"])
    narrower["search"]["modules"]["eca"]["kernel_size"] = [3, 5]
    with pytest.raises(ConfigError, match="the existing study of this name has other space"):
        open_search_study(parse_search(parse_ablation(narrower)), storage)
    open_study("grid", storage).ask()
    with pytest.raises(ConfigError, match="search.study='grid' is not allowed: a new name"):
        open_search_study(parse_search(parse_ablation(search_file(study="grid"))), storage)


def test_redact_hides_the_whole_userinfo() -> None:
    assert redact("postgresql://bench:s3cr@t@db.lab:5432/optuna") == "postgresql://***@db.lab:5432/optuna"
    assert redact("postgresql://bench@db.lab/optuna") == "postgresql://***@db.lab/optuna"
    assert redact("sqlite:///results/attnbench.db") == "sqlite:///results/attnbench.db"


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # One thread: on a busy 2-core machine torch's default two threads can make this 30x slower (OpenMP spin-waits).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_search_trains_exports_the_front_and_refuses_bad_input(tmp_path: Path) -> None:
    """Accuracy (a short training run) against MACs through `bench.py --search`, then the one-line errors."""
    data = {"name": "cli", "backbones": BACKBONE,
            "train": {"data": {"dataset": "synthetic", "synthetic_samples": 64, "image_size": 8}, "epochs": 1,
                      "batch_size": 32, "seeds": [0]},
            "search": {"objectives": ["accuracy", "macs"], "sampler": "random", "seed": 0,
                       "modules": {"se": {"reduction": [8, 32]}, "none": {}}}}
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(data))
    result = bench("--search", str(path), "--trials", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the study has 3 finished trials" in result.stderr and "| label" in result.stdout
    trials = pd.read_csv(tmp_path / "results" / "cli-search" / "trials.csv")
    assert len(trials) == 3 and trials["accuracy"].between(0, 100).all() and (trials["macs"] > 3e7).all()
    assert (tmp_path / "results" / "cli-search" / "pareto.png").stat().st_size > 10_000
    again = bench("--search", str(path), "--trials", "3", "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and "0 trials here" in again.stderr, "a finished study is not run again"
    unreachable = bench("--search", str(path), "--storage", "postgresql://bench:pa55word@127.0.0.1:1/optuna", cwd=tmp_path)
    assert unreachable.returncode == 2 and unreachable.stderr.count("\n") == 1
    assert "pa55word" not in unreachable.stderr and "postgresql://***@127.0.0.1:1/optuna" in unreachable.stderr
