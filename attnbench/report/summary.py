"""The one-page summary of a study: each module at its paper defaults in each backbone group, against the baseline.

A row is at paper defaults when its label is the module's name: the label spells out every
hyperparameter that differs from the module's defaults and any placement off the backbone's
defaults (`se(reduction=8)`, `se@4,5`, `se[post]`), and a stored point whose hyperparameters no
longer equal the registry's defaults is not taken. A module the study only placed elsewhere
(`se@2,3` in every row) is shown at its default hyperparameters in that placement, its label
saying so. Baseline rows give absolute values; module rows the change against them, with the
95 % interval where one was measured (attnbench.report.stats).
"""
from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from attnbench.report.common import GROUP, LATENCY, MACS, PARAMS, TOP1, group_titles, si
from attnbench.report.latex import MAX_ROWS, NEEDS, STAR, TEST_NAMES, escape, font_size, module_cell, slug, table_float
from attnbench.report.significance import interval_text, latency_change, p_text, signed

_PLACEMENT_ONLY = r"(@[\d,]+)?(\[\w+\])?"


def _registry_defaults(module: str) -> dict[str, Any] | None:
    """The module's current default hyperparameters; None for a module this version does not register."""
    from attnbench.modules import get_module_entry

    try:
        return get_module_entry(module).schema.defaults()
    except (KeyError, ValueError):
        return None


def _same(a: Any, b: Any) -> bool:
    """Equal, with stored lists and tuples alike."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def hyperparameters_at_defaults(row: pd.Series) -> bool:
    """Whether the row's stored hyperparameters equal the module's current defaults (True where unknown)."""
    stored = row.get("point_hyperparameters")
    defaults = _registry_defaults(str(row.get("attention")))
    if not isinstance(stored, dict) or defaults is None:
        return True
    return all(_same(value, defaults[name]) for name, value in stored.items() if name in defaults)


def at_paper_defaults(row: pd.Series) -> bool:
    """Whether a variant row is its module at paper defaults: hyperparameters and placement."""
    return row.get("label") == row.get("attention") and hyperparameters_at_defaults(row)


def default_hyperparameters_elsewhere(row: pd.Series) -> bool:
    """Whether a variant row is its module at default hyperparameters, placed off the backbone's defaults."""
    label, module = str(row.get("label")), str(row.get("attention"))
    return (label.startswith(module) and re.fullmatch(_PLACEMENT_ONLY, label[len(module):]) is not None
            and hyperparameters_at_defaults(row))


def leaderboard_groups(frame: pd.DataFrame) -> list[tuple[tuple, Any, list[Any]]]:
    """(group key, baseline index or None, module row indices) per backbone group, modules ranked by top-1 where measured."""
    done = frame[frame["state"] == "COMPLETE"] if "state" in frame else frame
    if done.empty:
        return []
    keys = [tuple(r) for r in done[GROUP].itertuples(index=False, name=None)]
    groups = []
    for key in dict.fromkeys(keys):
        members = done[[k == key for k in keys]]
        base = members.index[members["attention"] == "none"]
        chosen = []
        for module in dict.fromkeys(members.loc[members["attention"] != "none", "attention"]):
            rows = members[members["attention"] == module]
            exact = [i for i, row in rows.iterrows() if at_paper_defaults(row)]
            elsewhere = [i for i, row in rows.iterrows() if default_hyperparameters_elsewhere(row)]
            if exact or len(elsewhere) == 1:  # several placements and none the default: no one row speaks for it
                chosen.append((exact or elsewhere)[0])
        if "delta_top1_mean" in done and done.loc[chosen, "delta_top1_mean"].notna().any():
            chosen.sort(key=lambda i: -done.at[i, "delta_top1_mean"] if pd.notna(done.at[i, "delta_top1_mean"]) else math.inf)
        if len(base) or chosen:
            groups.append((key, base[0] if len(base) else None, chosen))
    return groups


def _has(frame: pd.DataFrame, column: str) -> bool:
    """Whether `frame` has a value in `column`."""
    return column in frame and pd.to_numeric(frame[column], errors="coerce").notna().any()


def _count(value: Any, signed_text: bool) -> str:
    """A count with an SI prefix (+2.53M, or 25.6M unsigned); empty where unknown."""
    if pd.isna(value):
        return ""
    text = si(float(value))
    return text if signed_text else text.lstrip("+")


def _top1_markdown(row: pd.Series) -> tuple[str, str]:
    """(Δtop-1 with its interval, test result) of a module row."""
    delta = row.get("delta_top1_mean")
    if pd.isna(delta):
        return "", ""
    test = row.get("delta_top1_test") or ""
    star = "*" if row.get("delta_top1_significant") is True else ""
    shown = f"{signed(delta, 2)}{star} {interval_text(row.get('delta_top1_ci_low'), row.get('delta_top1_ci_high'), 2)}"
    return shown.strip(), f"{p_text(row.get('delta_top1_p'))} ({test})" if test else ""


def _latency_markdown(row: pd.Series) -> str:
    """Δlatency %: the paired change with its interval where measured, else the change of the medians."""
    change = latency_change(row)
    if change is not None:
        return f"{change.value:+.1f}{'' if change.includes_zero() else '*'} % {interval_text(change.low, change.high, 1)}"
    delta = row.get("delta_latency_median_ms_pct")
    return "" if pd.isna(delta) else f"{delta:+.1f} %"


def leaderboard(frame: pd.DataFrame) -> pd.DataFrame:
    """The Markdown leaderboard: the baseline's absolute values, then each module's changes against it."""
    groups = leaderboard_groups(frame)
    if not groups:
        return pd.DataFrame()
    titles = group_titles(frame[frame["state"] == "COMPLETE"] if "state" in frame else frame)
    latency, top1 = _has(frame, LATENCY.columns[0]), _has(frame, TOP1.columns[0])
    records = []
    for key, base, modules in groups:
        if base is not None:
            row = frame.loc[base]
            record = {"backbone": titles[key], "module": "none (baseline)", "params": _count(row.get("params"), False),
                      "MACs": _count(row.get("macs"), False)}
            if latency:
                record["latency"] = "" if pd.isna(row.get("latency_median_ms")) else f"{row['latency_median_ms']:.2f} ms"
            if top1:
                record["top-1 (%)"] = "" if pd.isna(row.get("top1_mean")) else f"{row['top1_mean']:.2f}"
                record["top-1 test"] = ""
            records.append(record)
        for index in modules:
            row = frame.loc[index]
            record = {"backbone": titles[key], "module": row["label"], "params": _count(row.get("delta_params"), True),
                      "MACs": _count(row.get("delta_macs"), True)}
            if latency:
                record["latency"] = _latency_markdown(row)
            if top1:
                record["top-1 (%)"], record["top-1 test"] = _top1_markdown(row)
            records.append(record)
    return pd.DataFrame(records)


def legend(latency: bool, top1: bool, intervals: bool, percent: str = "%", interval: str = "95 %") -> str:
    """The line that says what the leaderboard's columns hold, naming only the measurements it shows."""
    changes = ["params and MACs as counts with an SI prefix"]
    if latency:
        changes.append(f"latency in {percent}")
    if top1:
        changes.append("top-1 in points")
    text = (f"Baseline rows: absolute values; module rows: change against that baseline, {', '.join(changes)}"
            + (f", with the {interval} interval in brackets where measured." if intervals else "."))
    return text


LEGEND_MD = ("Each module at its paper defaults (a label with `@stages` or `[position]` marks a module this study "
             "placed only there).")


def _intervals(frame: pd.DataFrame) -> bool:
    """Whether any row shows a top-1 interval or a paired latency change."""
    tested = "delta_top1_test" in frame and frame["delta_top1_test"].astype(bool).any()
    return tested or any(latency_change(row) is not None for _, row in frame.iterrows())


def summary_markdown(frame: pd.DataFrame) -> str:
    """The leaderboard section for the top of report.md."""
    table = leaderboard(frame)
    if table.empty:
        return "(no completed points)"
    intervals = _intervals(frame)
    text = f"{LEGEND_MD} {legend('latency' in table, 'top-1 (%)' in table, intervals)}"
    marks = []
    if "top-1 test" in table and table["top-1 test"].astype(bool).any():
        marks.append("top-1: the t-test named beside it")
    if "latency" in table and table["latency"].str.contains("[", regex=False).any():
        marks.append("latency: the paired interval excludes zero")
    if marks:
        text += f" `*`: significant at 0.05 ({'; '.join(marks)})."
    return text + "\n\n" + table.to_markdown(index=False, disable_numparse=True)


def _latex_module_cells(row: pd.Series, latency: bool, top1: bool) -> list[str]:
    """A module row's change cells."""
    def count(value: Any) -> str:
        text = _count(value, True)
        number = text.rstrip("GMK")
        return f"${number}${text[len(number):]}" if text else "--"

    cells = [count(row.get("delta_params")), count(row.get("delta_macs"))]
    if latency:
        change = latency_change(row)
        if change is not None:
            star = "" if change.includes_zero() else STAR
            cells.append(rf"${change.value:+.1f}{star}$\% {{\scriptsize[${change.low:+.1f}$, ${change.high:+.1f}$]}}")
        else:
            delta = row.get("delta_latency_median_ms_pct")
            cells.append("--" if pd.isna(delta) else rf"${delta:+.1f}$\%")
    if top1:
        delta, low, high = (row.get(c) for c in ("delta_top1_mean", "delta_top1_ci_low", "delta_top1_ci_high"))
        star = STAR if row.get("delta_top1_significant") is True else ""
        cell = "--" if pd.isna(delta) else f"${delta:+.2f}{star}$"
        if not (pd.isna(low) or pd.isna(high)):
            cell += rf" {{\scriptsize[${low:+.2f}$, ${high:+.2f}$]}}"
        cells.append(cell)
    return cells


def _latex_baseline_cells(row: pd.Series, latency: bool, top1: bool) -> list[str]:
    """A baseline row's absolute cells."""
    cells = [_count(row.get("params"), False) or "--", _count(row.get("macs"), False) or "--"]
    if latency:
        cells.append("--" if pd.isna(row.get("latency_median_ms")) else rf"{row['latency_median_ms']:.2f}\,ms")
    if top1:
        cells.append("--" if pd.isna(row.get("top1_mean")) else f"{row['top1_mean']:.2f}")
    return cells


def summary_tex(frame: pd.DataFrame, study: str = "") -> str:
    """summary.tex: the leaderboard as booktabs floats, backbone groups packed into floats of at most MAX_ROWS rows."""
    lines = [f"% attnbench study {study!r}: summary, each module at its paper defaults against the baseline.", NEEDS]
    groups = leaderboard_groups(frame)
    if not groups:
        return "\n".join(lines + ["% (no completed points)"]) + "\n"
    done = frame[frame["state"] == "COMPLETE"] if "state" in frame else frame
    titles = group_titles(done)
    latency, top1 = _has(done, LATENCY.columns[0]), _has(done, TOP1.columns[0])
    header = ["Module", PARAMS.short, MACS.short] + ([LATENCY.short] if latency else []) + ([TOP1.latex] if top1 else [])
    spec = "l" + "r" * (len(header) - 1)
    tests = {done.at[i, "delta_top1_test"] for _, _, modules in groups for i in modules
             if "delta_top1_test" in done and done.at[i, "delta_top1_test"]}

    blocks = []  # one list of table lines per backbone group: a heading row, the baseline, the modules
    for key, base, modules in groups:
        block = [rf"\multicolumn{{{len(header)}}}{{l}}{{\textit{{{escape(titles[key])}}}}} \\"] if len(groups) > 1 else []
        if base is not None:
            block.append(" & ".join(["none (baseline)"] + _latex_baseline_cells(done.loc[base], latency, top1)) + r" \\")
        block += [" & ".join([module_cell(done.at[i, "label"])[0]] + _latex_module_cells(done.loc[i], latency, top1))
                  + r" \\" for i in modules]
        blocks.append(block)
    floats: list[list[str]] = [[]]
    for block in blocks:
        if floats[-1] and len(floats[-1]) + 1 + len(block) > MAX_ROWS:
            floats.append([])
        floats[-1] += ([r"\midrule"] if floats[-1] else []) + block

    note = (r"Each module at its paper defaults (@stages or [position] after a name: the only placement this study "
            r"measured it in). " + legend(latency, top1, _intervals(done), r"\%", r"95\,\%"))
    if tests:
        used = " or ".join(TEST_NAMES[t] for t in sorted(tests, key=list(TEST_NAMES).index))
        note += rf" Top-1 interval and test: {used}; ${STAR}$: significant at 0.05."
    if latency and any(latency_change(done.loc[i]) is not None for _, _, modules in groups for i in modules):
        note += rf" Latency: paired timing; ${STAR}$: its interval excludes zero."
    title = titles[groups[0][0]] if len(groups) == 1 else "modules at paper defaults"
    for number, body in enumerate(floats):
        # the first float of several says how many there are; only the later ones are continuations
        continued = "" if len(floats) == 1 else (f" (part 1 of {len(floats)})" if number == 0 else
                                                 f" (continued, part {number + 1} of {len(floats)})")
        caption = rf"Study \texttt{{{escape(study)}}}, summary: {escape(title)}{continued}."
        label = f"tab:{slug(study)}-summary" + (f"-{number + 1}" if len(floats) > 1 else "")
        lines += [""] + table_float(spec, header, body, caption, label, note, font_size(len(header) - 1))
    return "\n".join(lines) + "\n"
