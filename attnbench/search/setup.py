"""The `search:` section of an ablation file, validated into everything a search run needs.

    search:
      study: digits-search           # default: <name>-search; exports go to results/<study>/
      objectives: [accuracy, macs]   # attnbench.search.objectives
      budgets: {macs: 4.0e7}
      sampler: nsga2                 # attnbench.search.samplers
      pruner: none
      trials: 20                     # total finished trials the study aims at (--trials overrides)
      seed: 0                        # sampler seed (worker i of one command uses seed + i)
      modules: {...}                 # attnbench.search.space
      stages: [[2, 3, 4, 5], [4, 5]]
      position: [standard, post]

The search runs on the file's one backbone (and one batch size) with the file's `measure:`
and `train:` sections, like a grid: `accuracy` needs `train:`, `latency` and `memory` need
`measure: {latency: true}` / `{memory: true}`.
"""
from __future__ import annotations

from dataclasses import dataclass

from attnbench.config.ablation import Ablation
from attnbench.core.checks import check_int
from attnbench.core.errors import ConfigError, check_keys
from attnbench.core.paths import check_study_name
from attnbench.run.runner import parse_options
from attnbench.search.objectives import METRICS, Direction, Metric, parse_budgets, parse_objectives
from attnbench.search.samplers import Algorithm, parse_pruner, parse_sampler
from attnbench.search.space import Base, SearchSpace, parse_space

SEARCH_KEYS = ("study", "objectives", "budgets", "sampler", "pruner", "trials", "seed", "modules", "stages", "position")
DEFAULT_TRIALS = 20


@dataclass(frozen=True)
class SearchSetup:
    """A validated search: study name, space, objectives, budgets, algorithms and the training section."""

    study: str
    space: SearchSpace
    objectives: tuple[Metric, ...]
    budgets: dict[str, float]
    sampler: Algorithm
    pruner: Algorithm
    trials: int
    seed: int | None
    custom_backbones: tuple = ()  # the ablation's user backbones: unpickled in a --workers child, they register there

    @property
    def directions(self) -> list[Direction]:
        """Optuna's direction of each objective."""
        return [m.direction for m in self.objectives]

    @property
    def needs_training(self) -> bool:
        """Whether an objective comes from training."""
        return any(m.needs_training for m in self.objectives)


def parse_search(ablation: Ablation) -> SearchSetup:
    """Validate the ablation's search section; ConfigError names the key, the value and what is allowed."""
    section = ablation.search
    if not section:
        raise ConfigError("search", section, "a `search:` section in the ablation file (see ablations/search_digits.yaml)")
    check_keys(section, SEARCH_KEYS, "search.")
    baselines = [p for p in ablation.points if p.attention == "none"]
    if len(baselines) != 1:
        raise ConfigError("backbones", sorted({p.backbone for p in baselines}),
                          "exactly one backbone and one batch size for a search")
    base = Base(baselines[0].backbone, baselines[0].input_size, baselines[0].batch_size, baselines[0].num_classes)
    study = check_study_name("search.study", section.get("study", f"{ablation.name}-search"))
    objectives = parse_objectives(section.get("objectives", "accuracy" if ablation.train else "macs"))
    if any(m.needs_training for m in objectives) and not ablation.train:
        raise ConfigError("search.objectives", [m.name for m in objectives],
                          "metrics measured without training, or add a `train:` section for accuracy")
    budgets = parse_budgets(section.get("budgets"))
    _check_measured(ablation, objectives, budgets)
    trials = section.get("trials", DEFAULT_TRIALS)
    check_int("search.trials", trials)
    seed = section.get("seed")
    if seed is not None:
        check_int("search.seed", seed, 0, allowed="a non-negative integer, or null for a random seed")
    return SearchSetup(
        study=study, space=parse_space(section, base), objectives=objectives,
        budgets=budgets, sampler=parse_sampler(section.get("sampler"), objectives),
        pruner=parse_pruner(section.get("pruner"), objectives), trials=trials, seed=seed,
        custom_backbones=ablation.custom_backbones,
    )


def _check_measured(ablation: Ablation, objectives: tuple[Metric, ...], budgets: dict[str, float]) -> None:
    """Latency and memory objectives or budgets need the file's `measure:` section to switch them on."""
    options = parse_options(ablation.measure, None)
    wanted = [("search.objectives", m) for m in objectives] + [(f"search.budgets.{n}", METRICS[n]) for n in budgets]
    for key, metric in wanted:
        if metric.needs is not None and metric.needs != "training" and not options.enabled(metric.needs):
            raise ConfigError(key, metric.name, f"a metric the runs measure: add `measure: {{{metric.needs}: true}}`")
