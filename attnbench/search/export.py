"""A search's exports: every trial (trials.csv), the feasible Pareto front (pareto.csv) and its plot (pareto.png)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from attnbench.search.objectives import Metric
from attnbench.search.setup import SearchSetup
from attnbench.store.study import trial_point_key


def trials_frame(study: optuna.Study, setup: SearchSetup) -> pd.DataFrame:
    """One row per finished trial: point, objective values, budget excesses, measurements, and why it ended."""
    rows = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not trial.state.is_finished():
            continue
        point = trial.user_attrs.get("point", {})
        row: dict[str, Any] = {
            "trial": trial.number, "state": trial.state.name, "label": trial.user_attrs.get("label", ""),
            "point_key": trial_point_key(trial) or "", "attention": point.get("attention", ""),
            "hyperparameters": _text(point.get("hyperparameters", {})), "stages": _text(point.get("stages", [])),
            "position": point.get("position", ""),
        }
        row.update({m.name: v for m, v in zip(setup.objectives, trial.values or [])})
        row.update({f"over_{name}": excess for name, excess in trial.constraints.items()})
        row["feasible"] = all(excess <= 0 for excess in trial.constraints.values())
        result = trial.user_attrs.get("result", {})
        row.update({k: v for k, v in result.items() if k not in row and not isinstance(v, (dict, list))})
        for attr in ("error", "pruned", "same_as"):
            row[attr] = trial.user_attrs.get(attr, "")
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_frame(study: optuna.Study, frame: pd.DataFrame, setup: SearchSetup) -> pd.DataFrame:
    """The feasible non-dominated trials (Optuna's `best_trials`), one per point, best first objective first."""
    if frame.empty:
        return frame
    front = frame[frame["trial"].isin([t.number for t in study.best_trials])].drop_duplicates("point_key")
    first = setup.objectives[0]
    return front.sort_values(first.name, ascending=first.direction == "minimize", kind="stable").reset_index(drop=True)


def export_search(study: optuna.Study, setup: SearchSetup, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write trials.csv and pareto.csv (and pareto.png for two or more objectives); return both frames."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = trials_frame(study, setup)
    front = pareto_frame(study, frame, setup)
    frame.to_csv(out_dir / "trials.csv", index=False)
    front.to_csv(out_dir / "pareto.csv", index=False)
    if len(setup.objectives) > 1 and not front.empty:
        plot_front(frame, front, setup.objectives[1], setup.objectives[0], out_dir / "pareto.png", setup.study)
    return frame, front


def front_table(front: pd.DataFrame, setup: SearchSetup) -> pd.DataFrame:
    """The front for a terminal: variant, objectives, trial."""
    columns = ["label", "stages", *(m.name for m in setup.objectives), "trial"]
    return front[[c for c in columns if c in front]]


def plot_front(frame: pd.DataFrame, front: pd.DataFrame, x: Metric, y: Metric, path: Path, title: str) -> None:
    """Every completed trial, infeasible ones marked, and the front as a step line with its variants named."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend, no display needed
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    done = frame[frame["state"] == "COMPLETE"]
    feasible, infeasible = done[done["feasible"]], done[~done["feasible"]]
    axes.scatter(feasible[x.name], feasible[y.name], s=18, color="0.6", label="trials")
    if not infeasible.empty:
        axes.scatter(infeasible[x.name], infeasible[y.name], s=22, marker="x", color="tab:red", label="over budget")
    line = front.sort_values(x.name)
    # What is attainable between two front points is the cheaper one's y (the dearer one's when x is a gain): a staircase.
    axes.step(line[x.name], line[y.name], where="post" if x.direction == "minimize" else "pre",
              color="tab:blue", marker="o", label="Pareto front")
    for _, row in line.iterrows():
        axes.annotate(row["label"], (row[x.name], row[y.name]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    axes.set_xlabel(f"{x.label} ({'higher' if x.direction == 'maximize' else 'lower'} is better)")
    axes.set_ylabel(f"{y.label} ({'higher' if y.direction == 'maximize' else 'lower'} is better)")
    axes.set_title(f"{title}: {len(done)} completed trials, {len(front)} on the front")
    axes.legend(loc="best", fontsize=8)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=150)


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
