"""Figures of a study, as PNG and PDF: a Pareto plot and one ablation plot per (module, hyperparameter).

Figures are drawn on explicit Agg canvases, so no display and no global pyplot state are involved.
Ablation series are found from the points themselves: for a module in a backbone group, the
points that differ only in one hyperparameter (or placement axis) form a series along it; an axis
that moves in lockstep with it (VAN's (K, d) pairs) is shown in the tick labels instead of
splitting the series. Boolean switches are left to the tables.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from attnbench.report.common import GROUP, LATENCY, MACS, PARAMS, TOP1, Metric, group_titles

FORMATS = ("png", "pdf")
DPI = 150
PLACEMENT_AXES = ("stages", "position")


def pareto_front(x: Sequence[float], y: Sequence[float], maximize_y: bool = False) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, and lower y or higher when maximize_y), by x."""
    sign = -1.0 if maximize_y else 1.0
    front: list[int] = []
    best = float("inf")
    for i in sorted(range(len(x)), key=lambda i: (x[i], sign * y[i])):
        if sign * y[i] < best:
            front.append(i)
            best = sign * y[i]
    return front


def _save(figure: Figure, out_dir: Path, stem: str) -> list[Path]:
    FigureCanvasAgg(figure)
    paths = [out_dir / f"{stem}.{ext}" for ext in FORMATS]
    for path in paths:
        figure.savefig(path, dpi=DPI)
    return paths


def _completed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["state"] == "COMPLETE"] if "state" in frame else frame


def _value(row: pd.Series, metric: Metric, column: str) -> float:
    return float(pd.to_numeric(row[column], errors="coerce")) * metric.scale


def _in_group(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    return frame[[tuple(r) == key for r in frame[GROUP].itertuples(index=False, name=None)]]


def _baseline(group: pd.DataFrame) -> pd.Series | None:
    rows = group[group["attention"] == "none"]
    return None if rows.empty else rows.iloc[0]


def pareto_axes(frame: pd.DataFrame) -> tuple[tuple[Metric, str], tuple[Metric, str], bool] | None:
    """(x, y, maximize_y): accuracy against latency (or MACs) when accuracy was measured, else params against MACs."""
    def pick(*metrics: Metric) -> tuple[Metric, str] | None:
        return next(((m, c) for m in metrics if (c := m.column(frame)) is not None), None)

    top1, cost = pick(TOP1), pick(LATENCY, MACS)
    if top1 and cost:
        return cost, top1, True
    macs, params = pick(MACS), pick(PARAMS)
    return (macs, params, False) if macs and params else None


def _pareto_points(group: pd.DataFrame, x: tuple[Metric, str], y: tuple[Metric, str], maximize: bool
                   ) -> tuple[pd.DataFrame, list[float], list[float], bool]:
    """The points to draw and their coordinates.

    For two costs, the coordinates are the attention overhead over the baseline when all of it is positive.

    Two costs put the baseline below every variant, so the front that matters is among the
    variants; their overheads span orders of magnitude, hence log axes.
    """
    (xm, xc), (ym, yc) = x, y
    group = group[pd.to_numeric(group[xc], errors="coerce").notna() & pd.to_numeric(group[yc], errors="coerce").notna()]
    base = _baseline(group)
    if not maximize and base is not None:
        variants = group[group["attention"] != "none"]
        dx = [float(r[xc]) - float(base[xc]) for _, r in variants.iterrows()]
        dy = [float(r[yc]) - float(base[yc]) for _, r in variants.iterrows()]
        if dx and all(v > 0 for v in dx + dy):
            return variants, dx, dy, True
    return group, [_value(r, xm, xc) for _, r in group.iterrows()], [_value(r, ym, yc) for _, r in group.iterrows()], False


def plot_pareto(frame: pd.DataFrame, out_dir: Path, stem: str = "pareto") -> list[Path]:
    """One panel per backbone group: every variant, the Pareto front as a staircase, front points labelled."""
    done = _completed(frame)
    axes_spec = pareto_axes(done) if not done.empty else None
    if axes_spec is None:
        return []
    x, y, maximize = axes_spec
    titles = group_titles(done)
    modules = list(dict.fromkeys(done["attention"]))
    colors = {m: "black" if m == "none" else f"C{i % 10}" for i, m in enumerate(modules)}
    columns = min(len(titles), 3)
    rows = -(-len(titles) // columns)
    figure = Figure(figsize=(5.2 * columns + 1.4, 4.4 * rows), layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (key, title) in zip(panels, titles.items()):
        group, xs, ys, overhead = _pareto_points(_in_group(done, key), x, y, maximize)
        attention = list(group["attention"])
        for module in modules:
            picked = [i for i, a in enumerate(attention) if a == module]
            if picked:
                ax.scatter([xs[i] for i in picked], [ys[i] for i in picked], s=90 if module == "none" else 28,
                           color=colors[module], marker="*" if module == "none" else "o", zorder=3, label=module)
        front = pareto_front(xs, ys, maximize)
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="0.35", lw=1, zorder=2)
        labels = list(group["label"])
        for i in front:
            ax.annotate(labels[i], (xs[i], ys[i]), xytext=(4, 4), textcoords="offset points", fontsize=7)
        if overhead:
            ax.set(xscale="log", yscale="log", xlabel=f"added {x[0].short}", ylabel=f"added {y[0].short}")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(EngFormatter(sep=""))
        else:
            ax.set(xlabel=x[0].name, ylabel=y[0].name)
            ax.ticklabel_format(useOffset=False, style="plain")
        ax.set_title(title + (" (over no attention)" if overhead else ""))
        ax.grid(alpha=0.3, which="both" if overhead else "major")
    for ax in panels[len(titles):]:
        ax.set_visible(False)
    handles = {h.get_label(): h for ax in panels for h in ax.collections}
    figure.legend(list(handles.values()), list(handles), loc="outside right upper", title="module", fontsize=8)
    goal = "higher is better" if maximize else "front: cheapest variants"
    figure.suptitle(f"{y[0].short} vs {x[0].short} ({goal})")
    return _save(figure, out_dir, stem)


@dataclass(frozen=True)
class Series:
    """Points of one module in one backbone group that differ only along `axis` (and axes locked to it)."""

    module: str
    axis: str
    group: tuple
    fixed: tuple[tuple[str, Any], ...]  # the other axes' values shared by the series
    locked: tuple[str, ...]  # axes whose value is determined by `axis` here, shown in tick labels
    rows: tuple[int, ...]  # frame index labels, one per axis value


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def _point_axes(row: pd.Series) -> dict[str, Any]:
    axes = {k: _hashable(v) for k, v in (row.get("point_hyperparameters") or {}).items()}
    axes.update({name: _hashable(row[name]) for name in PLACEMENT_AXES if name in row})
    return axes


def _locked(axes: dict[int, dict[str, Any]], other: str, axis: str) -> bool:
    """Whether every value of `axis` comes with a single value of `other` among these points."""
    seen: dict[Any, set] = defaultdict(set)
    for values in axes.values():
        seen[values.get(axis)].add(values.get(other))
    return all(len(v) == 1 for v in seen.values())


def ablation_series(frame: pd.DataFrame) -> list[Series]:
    """Every series of at least two points along a non-boolean axis, per (backbone group, module)."""
    done = _completed(frame)
    done = done[done["attention"] != "none"]
    found: list[Series] = []
    for (*group, module), points in done.groupby(GROUP + ["attention"], sort=False):
        axes = {i: _point_axes(row) for i, row in points.iterrows()}
        names = list(dict.fromkeys(n for values in axes.values() for n in values))
        varying = [n for n in names if len({values.get(n) for values in axes.values()}) > 1]
        drawable = [n for n in varying if not any(isinstance(values.get(n), bool) for values in axes.values())]
        for axis in drawable:
            locked = tuple(g for g in varying if g != axis and _locked(axes, g, axis))
            if any(g in drawable[:drawable.index(axis)] and _locked(axes, axis, g) for g in locked):
                continue  # the two move together both ways: drawn once, along the first
            others = [g for g in names if g != axis and g not in locked]
            partitions: dict[tuple, list[int]] = defaultdict(list)
            for i, values in axes.items():
                partitions[tuple(values.get(g) for g in others)].append(i)
            for shared, members in partitions.items():
                if len({axes[i].get(axis) for i in members}) > 1:
                    ordered = sorted(members, key=lambda i: _order(axes[i].get(axis)))
                    found.append(Series(module, axis, tuple(group), tuple(zip(others, shared)), locked, tuple(ordered)))
    return found


def _order(value: Any) -> tuple:
    """Sort key for axis values: None (a paper's adaptive default) first, then numbers; text keeps its ablation-file order."""
    if value is None:
        return (0,)
    if isinstance(value, tuple):
        return (1, len(value), tuple(_order(v) for v in value))
    if isinstance(value, (int, float)):
        return (1, 0, value)
    return (2,)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, tuple) and any(_is_text(v) for v in value))


def show(value: Any) -> str:
    """Axis value as a tick label: None -> auto, (7, 11, 21) -> 7/11/21."""
    if value is None:
        return "auto"
    if isinstance(value, tuple):
        return "/".join(map(show, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def ablation_metrics(frame: pd.DataFrame) -> list[tuple[Metric, str]]:
    """Top-1 and latency (or MACs) when accuracy was measured, else MACs and params."""
    chosen = [TOP1, LATENCY if LATENCY.column(frame) else MACS] if TOP1.column(frame) else [MACS, PARAMS]
    return [(m, c) for m in chosen if (c := m.column(frame)) is not None]


def plot_ablations(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One figure per (module, axis): a column per backbone group, a row per metric.

    Counts (params, MACs) are drawn as what the module adds over the group's baseline, since
    that is what varies; other metrics are drawn as measured, with the baseline dashed.
    """
    done = _completed(frame)
    metrics = ablation_metrics(done) if not done.empty else []
    if not metrics:
        return []
    titles = group_titles(done)
    by_plot: dict[tuple[str, str], list[Series]] = defaultdict(list)
    for series in ablation_series(done):
        by_plot[(series.module, series.axis)].append(series)
    paths: list[Path] = []
    for (module, axis), all_series in by_plot.items():
        groups = list(dict.fromkeys(s.group for s in all_series))
        figure = Figure(figsize=(4.6 * len(groups), 3.0 * len(metrics) + 0.6), layout="constrained")
        panels = figure.subplots(len(metrics), len(groups), squeeze=False)
        for column, group in enumerate(groups):
            members = [s for s in all_series if s.group == group]
            values = sorted(dict.fromkeys(_point_axes(done.loc[i])[axis] for s in members for i in s.rows), key=_order)
            ticks = {v: show(v) for v in values}
            for s in members:
                for i in s.rows:
                    point = _point_axes(done.loc[i])
                    if s.locked:
                        ticks[point[axis]] = show(point[axis]) + "\n" + ", ".join(f"{g}={show(point[g])}" for g in s.locked)
            base = _baseline(_in_group(done, group))
            for row, (metric, metric_column) in enumerate(metrics):
                ax = panels[row][column]
                added_over = base if metric.delta == "count" else None  # counts: what a module adds over the baseline
                added = added_over is not None
                spread_column = None if added else metric.spread_column(done)
                for s in members:
                    xs = [values.index(_point_axes(done.loc[i])[axis]) for i in s.rows]
                    raw = [float(pd.to_numeric(done.at[i, metric_column], errors="coerce")) for i in s.rows]
                    ys = ([v - float(added_over[metric_column]) for v in raw] if added_over is not None
                          else [v * metric.scale for v in raw])
                    differing = [f"{n}={show(v)}" for n, v in s.fixed if len({dict(m.fixed).get(n) for m in members}) > 1]
                    spread = [float(pd.to_numeric(done.at[i, spread_column], errors="coerce"))
                              * metric.scale * metric.spread_scale for i in s.rows] if spread_column else None
                    categorical = any(_is_text(v) for v in values)  # no line between unordered choices
                    ax.errorbar(xs, ys, yerr=spread, marker="o", capsize=3, ls="none" if categorical else "-",
                                label=", ".join(differing) or module)
                if added:
                    ax.yaxis.set_major_formatter(EngFormatter(sep=""))
                    ax.set_ylabel(f"added {metric.short}")
                else:
                    if base is not None:
                        ax.axhline(_value(base, metric, metric_column), color="0.4", ls="--", lw=1, label="no attention")
                    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
                    ax.set_ylabel(metric.name)
                ax.set_xticks(range(len(values)), [ticks[v] for v in values], fontsize=8)
                ax.grid(alpha=0.3)
                if row == 0:
                    ax.set_title(titles[group], fontsize=10)
                if row == len(metrics) - 1:
                    ax.set_xlabel(axis)
                if len(members) > 1 or not added:
                    ax.legend(fontsize=7)
        figure.suptitle(f"{module}: {axis}")
        paths += _save(figure, out_dir, "ablation_" + re.sub(r"[^\w-]+", "_", f"{module}_{axis}"))
    return paths
