"""The paper table: one booktabs `table` float per backbone group, each with a caption and label stub and a legend.

Only `booktabs` is needed (`\\usepackage{booktabs}`). Every metric column shows the value, its
spread where one was measured (latency: median +- half the interquartile range; top-1:
mean +- std), and in parentheses the change against the group's `none` baseline: counts as a
signed number with an SI prefix (+2.53M parameters), latency and memory in percent, top-1 in
points with its 95 % interval and a star where the t-test (attnbench.report.stats) finds it
significant at 0.05. A group longer than MAX_ROWS is split into continued floats, each starting
with the baseline, so every float fits on a page. Bold marks what a reader calls best among the
attention variants: the highest top-1 and the lowest latency; never params, MACs or memory.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from attnbench.report.common import GROUP, LATENCY, TOP1, Metric, group_titles, present, si, variant_name
from attnbench.report.significance import latency_change
from attnbench.report.stats import PAIRED, WELCH

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}
SIGNIFICANT = 3  # figures the smallest value of a column keeps
MAX_EXTRA_DIGITS = 3
# Lines per float: 36 lines of \small text (11 pt each), the caption and the legend fill about 500 pt,
# under the 550 pt of text height of article, the smallest of the standard classes.
MAX_ROWS = 36
PACKAGES = ("booktabs",)
# A longer module label breaks after a comma, so search studies' labels do not widen the table;
# tables of four or more metric columns break labels sooner.
LABEL_CHARS = 32
LABEL_CHARS_WIDE = 24
SCALED = "attnbench: table wider than the text, scaled to fit"
NEEDS = ("% Needs " + ", ".join(rf"\usepackage{{{p}}}" for p in PACKAGES)
         + r"; with \usepackage{graphicx} loaded, a table wider than the text is scaled to fit.")
STAR = "^{*}"
TEST_NAMES = {PAIRED: "a paired t-test by seed", WELCH: "Welch's t-test"}


def escape(text: Any) -> str:
    """`text` with every LaTeX special character made literal."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def slug(text: str) -> str:
    """A \\label-safe key: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "table"


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


def top1_delta_text(row: pd.Series, digits: int) -> str:
    """Δtop-1 with its 95 % interval and a star where significant, e.g. `($-0.83^{*}$ [$-1.40$, $-0.26$])`."""
    low, high = row.get("delta_top1_ci_low"), row.get("delta_top1_ci_high")
    if pd.isna(row.get("delta_top1_mean")) or pd.isna(low) or pd.isna(high):
        return ""
    star = STAR if row.get("delta_top1_significant") is True else ""
    return f"(${row['delta_top1_mean']:+.{digits}f}{star}$ [${low:+.{digits}f}$, ${high:+.{digits}f}$])"


def latency_delta_text(row: pd.Series) -> str:
    """The paired latency change in percent with its interval, a star where it excludes zero; empty if unmeasured."""
    change = latency_change(row)
    if change is None:
        return ""
    star = "" if change.includes_zero() else STAR
    return f"(${change.value:+.1f}{star}$\\% [${change.low:+.1f}$, ${change.high:+.1f}$])"


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def best_among_variants(values: pd.Series, attention: pd.Series, metric: Metric, digits: int) -> set[Any]:
    """Index labels of the best variant(s) as shown (ties bold together); none for counts, or under two variants."""
    if metric not in (TOP1, LATENCY):
        return set()
    shown = (values[attention != "none"] * metric.scale).round(digits).dropna()
    if len(shown) < 2:
        return set()
    best = shown.max() if metric.higher_is_better else shown.min()
    return set(shown.index[shown == best])


def pack(weights: Sequence[int], limit: int) -> list[list[int]]:
    """Positions 0..n-1 cut, in order, into runs whose weights add up to at most `limit` (a heavier item alone)."""
    runs: list[list[int]] = [[]]
    used = 0
    for position, weight in enumerate(weights):
        if runs[-1] and used + weight > limit:
            runs.append([])
            used = 0
        runs[-1].append(position)
        used += weight
    return runs


def module_cell(label: str, chars: int = LABEL_CHARS) -> tuple[str, int]:
    """The escaped module label and its line count: a label longer than `chars` breaks after its commas."""
    if len(label) <= chars or ", " not in label:
        return escape(label), 1
    lines = [""]
    for part in re.split(r"(?<=,) ", label):
        if lines[-1] and len(lines[-1]) + 1 + len(part) > chars:
            lines.append("")
        lines[-1] += (" " if lines[-1] else "") + part
    if len(lines) == 1:
        return escape(label), 1
    return r"\begin{tabular}[t]{@{}l@{}}" + r" \\ \quad ".join(map(escape, lines)) + r"\end{tabular}", len(lines)


def font_size(metric_columns: int) -> str:
    """The table's type size, smaller as metric columns are added, so the studies' tables fit a single-column text."""
    return r"\small" if metric_columns <= 3 else r"\footnotesize" if metric_columns == 4 else r"\scriptsize"


CHANGE_SIZE = {r"\small": r"\scriptsize", r"\footnotesize": r"\scriptsize", r"\scriptsize": r"\tiny"}


def table_float(spec: str, header: Sequence[str], body: Sequence[str], caption: str, label: str, legend: str,
                size: str = r"\small") -> list[str]:
    """One `table` float: caption and label stub above a booktabs tabular, the column legend below.

    The tabular is set in a box first and scaled down to the text width only where it is wider
    (a study with more columns than the layout was sized for); LaTeX's log then says so.
    """
    return [
        r"\begin{table}[tbp]",
        r"\centering",
        size,
        r"\setlength{\tabcolsep}{4pt}",
        "% caption stub: say what the reader should see",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\ifdefined\attnbenchbox\else\newsavebox{\attnbenchbox}\fi",
        r"\begin{lrbox}{\attnbenchbox}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{lrbox}",
        "% scaled to the text width only if wider, where graphicx is loaded",
        r"\ifdim\wd\attnbenchbox>\linewidth\ifdefined\resizebox\typeout{" + SCALED + "}"
        r"\resizebox{\linewidth}{!}{\usebox{\attnbenchbox}}\else\usebox{\attnbenchbox}\fi",
        r"\else\usebox{\attnbenchbox}\fi",
        "",
        r"\smallskip",
        rf"{{\footnotesize {legend}\par}}",
        r"\end{table}",
    ]


def legend_text(metrics: Sequence[tuple[Metric, str]], spreads: set[str], tests: set[str], paired_latency: bool,
                bold: bool) -> str:
    """The column legend under a table: units, spreads, what the parentheses hold, the test used, what bold means."""
    names = {m.short for m, _ in metrics}
    parts = [text for name, text in (
        ("Params", "Params in millions"),
        ("MACs", "MACs (multiply-accumulates; 1 MAC = 2 FLOPs) in billions"),
    ) if name in names]
    parts += [text for name, text in (
        ("Latency", r"latency: median $\pm$ half the interquartile range"),
        ("Top-1", r"top-1: mean $\pm$ std over seeds"),
    ) if name in spreads]
    text = "; ".join(parts)
    text = text[:1].upper() + text[1:] + (". " if text else "")
    units = ["counts with an SI prefix"]
    if percent := [n.lower() for n in ("Latency", "Memory") if n in names]:
        units.append(" and ".join(percent) + r" in \%")
    if "Top-1" in names:
        units.append("top-1 in points")
    text += "In parentheses: change against the baseline (no attention) of the table; " + ", ".join(units) + "."
    if tests:
        used = " or ".join(TEST_NAMES[t] for t in sorted(tests, key=list(TEST_NAMES).index))
        text += rf" Top-1 change with its 95\,\% interval ({used}); ${STAR}$: significant at 0.05."
    if paired_latency:
        text += rf" Latency change from paired timing, with its 95\,\% interval; ${STAR}$: the interval excludes zero."
    if bold:
        text += " Bold: best among the attention variants (highest top-1, lowest latency)."
    return text


def stacked_layout(metric_columns: int, intervals: bool) -> bool:
    """Whether changes go under their values: from four metric columns on, or where intervals are shown.

    On one line such a table is wider than a single-column text (a latency study with paired timing
    measured 410 pt at \\footnotesize against article's 345 pt); stacked, 290 pt.
    """
    return metric_columns >= 4 or intervals


def _with_change(cell: str, change: str, stacked: bool, size: str = r"\scriptsize") -> str:
    """A value cell with its change (in type `size`) beside it, or under it in a one-column tabular."""
    if not change:
        return cell
    if stacked:
        return r"\begin{tabular}[t]{@{}r@{}}" + cell + r" \\ {" + size + change + r"}\end{tabular}"
    return cell + " {" + size + change + "}"


def _cells(done: pd.DataFrame, members: list[Any], metric: Metric, column: str, digits: int,
           stacked: bool = False, size: str = r"\scriptsize") -> dict[Any, str]:
    """The cells of one metric column for one backbone group."""
    values = _numbers(done, column)
    spread_column = metric.spread_column(done)
    spreads = _numbers(done, spread_column) if spread_column else None
    attention = done.loc[members, "attention"]
    best = best_among_variants(values[members], attention, metric, digits)
    base_rows = [i for i in members if done.at[i, "attention"] == "none"]
    base = values[base_rows[0]] if base_rows else float("nan")
    cells = {}
    for i in members:
        value = values[i]
        if math.isnan(value):
            cells[i] = "--"
            continue
        text = f"{value * metric.scale:.{digits}f}"
        cell = rf"\textbf{{{text}}}" if i in best else text
        if spreads is not None and not math.isnan(spreads[i]):
            cell += rf"$\pm${spreads[i] * metric.scale * metric.spread_scale:.{digits}f}"
        if done.at[i, "attention"] != "none":
            row = done.loc[i]
            # the frame leaves a delta empty where the two rows are not comparable (timed at different batches
            # after an out-of-memory retry): the table must not recompute it from the raw values
            comparable = not pd.isna(row.get(f"delta_{column}", 0.0))
            change = (top1_delta_text(row, digits) if metric is TOP1 else
                      latency_delta_text(row) if metric is LATENCY else "") or (
                          delta_text(metric, value, base, digits) if comparable else "")
            cell = _with_change(cell, change, stacked, size)
        cells[i] = cell
    return cells


def latex_table(frame: pd.DataFrame, study: str = "") -> str:
    """One booktabs float per backbone group (split past MAX_ROWS rows) of every completed point in `frame`."""
    done = frame[frame["state"] == "COMPLETE"] if "state" in frame else frame
    omitted = len(frame) - len(done)
    lines = [
        f"% attnbench study {study!r}: {len(done)} variants" + (f", {omitted} failed points omitted" if omitted else ""),
        NEEDS,
        f"% One table float per backbone group, at most {MAX_ROWS} lines each (a longer group continues in the next "
        "float, baseline first).",
    ]
    if done.empty:
        return "\n".join(lines + ["% (no completed points)"]) + "\n"
    metrics = present(done)
    titles = group_titles(done)
    group_of = pd.Series([tuple(r) for r in done[GROUP].itertuples(index=False, name=None)], index=done.index, dtype=object)
    digits = {column: column_digits(metric, list(_numbers(done, column) * metric.scale)) for metric, column in metrics}
    tests = set(done["delta_top1_test"].dropna()) - {""} if "delta_top1_test" in done else set()
    paired_latency = any(latency_change(row) is not None for _, row in done.iterrows())
    header = ["Module"] + [m.latex for m, _ in metrics]
    spec = "l" + "r" * len(metrics)
    intervals = bool(tests) and any(m is TOP1 for m, _ in metrics) or paired_latency and any(m is LATENCY for m, _ in metrics)
    stacked = stacked_layout(len(metrics), intervals)
    size = font_size(len(metrics))
    for key, title in titles.items():
        members = list(group_of.index[group_of == key])
        cells = {column: _cells(done, members, metric, column, digits[column], stacked, CHANGE_SIZE[size])
                 for metric, column in metrics}
        bold = any(r"\textbf" in cell for column_cells in cells.values() for cell in column_cells.values())
        spreads = {m.short for m, _ in metrics if (c := m.spread_column(done)) and _numbers(done, c)[members].notna().any()}
        legend = legend_text(metrics, spreads, tests & set(done.loc[members, "delta_top1_test"]) if tests else set(),
                             paired_latency, bold)
        baseline = [i for i in members if done.at[i, "attention"] == "none"]
        variants = [i for i in members if i not in baseline]
        chars = LABEL_CHARS if len(metrics) <= 3 else LABEL_CHARS_WIDE
        names = {i: module_cell(variant_name(done.loc[i]), chars) for i in members}
        height = {i: max(names[i][1], 2 if any(r"\\" in cells[c][i] for _, c in metrics) else 1) for i in members}
        parts = pack([height[i] for i in variants], MAX_ROWS - sum(height[i] for i in baseline))
        for number, part in enumerate(parts):
            rows = baseline + [variants[p] for p in part]
            body = [" & ".join([names[i][0]] + [cells[c][i] for _, c in metrics]) + r" \\" for i in rows]
            if baseline and part:
                body.insert(len(baseline), r"\midrule")
            continued = f" (continued, part {number + 1} of {len(parts)})" if number > 0 else ""
            caption = rf"Study \texttt{{{escape(study)}}}: {escape(title)}{continued}."
            label = f"tab:{slug(study)}-{slug(title)}" + (f"-{number + 1}" if number > 0 else "")
            lines += [""] + table_float(spec, header, body, caption, label, legend, size)
    return "\n".join(lines) + "\n"
