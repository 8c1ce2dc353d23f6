"""The paper table: a booktabs tabular, one row per variant, the best value of each backbone group in bold.

Only `booktabs` is needed (`\\usepackage{booktabs}`). Every metric column shows the value, its
spread where one was measured (latency: median +- half the interquartile range; top-1:
mean +- std), and in parentheses the change against the group's `none` baseline: counts as a
signed number with an SI prefix (+2.53M parameters), latency and memory in percent, top-1 in points.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from attnbench.report.common import GROUP, Metric, group_titles, present, si, variant_name

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}
SIGNIFICANT = 3  # figures the smallest value of a column keeps
MAX_EXTRA_DIGITS = 3


def escape(text: Any) -> str:
    """`text` with every LaTeX special character made literal."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def column_digits(metric: Metric, shown: list[float]) -> int:
    """Decimals for a column: the metric's, or more (up to 3) so its smallest value keeps 3 significant figures."""
    nonzero = [abs(v) for v in shown if v and not math.isnan(v)]
    if not nonzero:
        return metric.digits
    needed = SIGNIFICANT - 1 - math.floor(math.log10(min(nonzero)))
    return min(max(metric.digits, needed), metric.digits + MAX_EXTRA_DIGITS)


def delta_text(metric: Metric, value: float, base: float, digits: int) -> str:
    """The change against the baseline as the table prints it, e.g. `($+2.53$M)`, `($+3.1$\\%)`; empty if unknown."""
    if math.isnan(value) or math.isnan(base):
        return ""
    if metric.delta == "pct":
        return "" if base == 0 else f"(${100.0 * (value - base) / base:+.1f}$\\%)"
    if metric.delta == "pp":
        return f"(${(value - base) * metric.scale:+.{digits}f}$)"
    text = si(value - base)
    number = text.rstrip("GMK")
    return f"(${number}${text[len(number):]})"


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def latex_table(frame: pd.DataFrame, study: str = "") -> str:
    """The booktabs tabular of every completed point in `frame` (an export frame, baseline first in each group)."""
    done = frame[frame["state"] == "COMPLETE"] if "state" in frame else frame
    omitted = len(frame) - len(done)
    metrics = present(done) if not done.empty else []
    titles = group_titles(done) if not done.empty else {}
    group_of = pd.Series([tuple(r) for r in done[GROUP].itertuples(index=False, name=None)] if not done.empty else [],
                         index=done.index, dtype=object)

    cells: dict[tuple[int, str], str] = {}
    for metric, column in metrics:
        values = _numbers(done, column)
        digits = column_digits(metric, list(values * metric.scale))
        spread_column = metric.spread_column(done)
        spreads = _numbers(done, spread_column) if spread_column else None
        for key in titles:
            members = group_of.index[group_of == key]
            present_values = values[members].dropna()
            best = (present_values.max() if metric.higher_is_better else present_values.min()) if len(present_values) else None
            base_rows = [i for i in members if done.at[i, "attention"] == "none"]
            base = values[base_rows[0]] if base_rows else float("nan")
            for i in members:
                value = values[i]
                if math.isnan(value):
                    cells[(i, column)] = "--"
                    continue
                text = f"{value * metric.scale:.{digits}f}"
                cell = rf"\textbf{{{text}}}" if value == best else text
                if spreads is not None and not math.isnan(spreads[i]):
                    cell += rf"$\pm${spreads[i] * metric.scale * metric.spread_scale:.{digits}f}"
                if done.at[i, "attention"] != "none" and (change := delta_text(metric, value, base, digits)):
                    cell += r" {\scriptsize" + change + "}"
                cells[(i, column)] = cell

    header = ["Backbone", "Module"] + [m.latex for m, _ in metrics]
    lines = [
        f"% attnbench study {study!r}: {len(done)} variants" + (f", {omitted} failed points omitted" if omitted else ""),
        "% Needs \\usepackage{booktabs}. Bold: best in its backbone group. In parentheses: change against the group's "
        "baseline (no attention): counts with an SI prefix, latency and memory in percent, top-1 in points.",
        "% Latency: median +- half the interquartile range; top-1: mean +- std over seeds. MACs: 1 MAC = 2 FLOPs.",
        r"\begin{tabular}{ll" + "r" * len(metrics) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    for number, key in enumerate(titles):
        if number:
            lines.append(r"\midrule")
        for position, i in enumerate(group_of.index[group_of == key]):
            row = [escape(titles[key]) if position == 0 else "", escape(variant_name(done.loc[i]))]
            lines.append(" & ".join(row + [cells[(i, column)] for _, column in metrics]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
