"""Reports from the store: every point with deltas against the baseline of the same backbone and input.

`export_grid` writes the CSV of everything and the Markdown comparison table; `write_report`
adds the paper pieces (booktabs table, Pareto and ablation plots, published figures) and
report.md tying them together; `report_studies` does that for studies read from an Optuna storage.
"""
from __future__ import annotations

import datetime
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench.core.errors import ConfigError
from attnbench.report.common import GROUP, GROUP_DEFAULTS
from attnbench.report.significance import add_top1_tests, interval_text, latency_change, p_text

# the batch each measurement was actually taken at, where an out-of-memory retry may have halved it
BATCH_USED = {"latency_median_ms": "batch_size_used", "memory_train_peak_bytes": "memory_batch_size_used"}


def points_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """All rows as a DataFrame with deltas (absolute and %) against each group's `none` baseline."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for column, default in GROUP_DEFAULTS.items():
        frame[column] = frame[column].fillna(default) if column in frame else default
    groups = frame.set_index(GROUP).index
    baselines = frame[frame["attention"] == "none"].set_index(GROUP)
    notes = pd.Series("", index=frame.index)
    for column in ("params", "macs", "flops", "latency_median_ms", "memory_train_peak_bytes", "top1_mean"):
        if column not in frame:
            continue
        base = _baseline_values(groups, baselines, column)
        used = BATCH_USED.get(column)
        if used is not None and used in frame:
            # an out-of-memory retry may have timed one side at a smaller batch: such a pair does not compare
            mine = pd.to_numeric(frame[used], errors="coerce").to_numpy(dtype=float)
            theirs = _baseline_values(groups, baselines, used)
            differs = ~np.isnan(mine) & ~np.isnan(theirs) & (mine != theirs)
            base = np.where(differs, np.nan, base)
            for index in np.flatnonzero(differs):
                notes.iloc[index] += (f"no Δ{column.split('_')[0]}: measured at batch {int(mine[index])}, "
                                      f"the baseline at {int(theirs[index])} (out-of-memory retry); ")
        values = pd.to_numeric(frame[column], errors="coerce")
        frame[f"delta_{column}"] = values - base
        frame[f"delta_{column}_pct"] = 100.0 * frame[f"delta_{column}"] / base
    if notes.str.len().any():
        frame["delta_note"] = notes.str.rstrip("; ")
    return add_top1_tests(frame, GROUP)


def _baseline_values(groups: pd.Index, baselines: pd.DataFrame, column: str) -> np.ndarray:
    """Each row's `column` in its group's baseline, NaN where the group has none."""
    baseline = baselines[column]
    return groups.map(lambda key: baseline.get(key, float("nan"))).to_numpy(dtype=float)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """`frame[name]`, or empty (NaN) cells where the rows lack it (stored by an older version or another program)."""
    return pd.to_numeric(frame[name], errors="coerce") if name in frame else pd.Series(float("nan"), index=frame.index)


def _signed(value: float, digits: int) -> str:
    return "" if pd.isna(value) else f"{value:+.{digits}f}"


def _spread(value: float, spread: float, sign: str = "± IQR") -> str:
    """`value ± spread` with two decimals; empty where unmeasured (a failed point)."""
    if pd.isna(value):
        return ""
    return f"{value:.2f}" if pd.isna(spread) else f"{value:.2f} {sign} {spread:.2f}"


def comparison_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The human table: params and MACs in M/G, latency, memory and top-1 where measured, deltas vs baseline."""
    if frame.empty:
        return frame
    table = pd.DataFrame({
        "backbone": frame["backbone"],
        "input": frame["input_size"].map(lambda s: f"{s}x{s}"),
        "variant": frame["label"],
    })
    # the axes that vary in this grid get a column each
    for column, title in (("batch_size", "batch"), ("dtype", "dtype"), ("channels_last", "NHWC")):
        if column in frame and frame[column].nunique() > 1:
            table[title] = frame[column]
    if "params" in frame:
        table["params (M)"] = (frame["params"] / 1e6).map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
        table["Δparams (M)"] = (_column(frame, "delta_params") / 1e6).map(lambda v: _signed(v, 3))
        table["Δparams %"] = _column(frame, "delta_params_pct").map(lambda v: _signed(v, 2))
        table["attn params (M)"] = (_column(frame, "attention_params") / 1e6).map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    if "macs" in frame:
        table["MACs (G)"] = (frame["macs"] / 1e9).map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
        table["ΔMACs (G)"] = (_column(frame, "delta_macs") / 1e9).map(lambda v: _signed(v, 4))
        table["ΔMACs %"] = _column(frame, "delta_macs_pct").map(lambda v: _signed(v, 2))
        table["FLOPs (G)"] = (_column(frame, "flops") / 1e9).map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    if "latency_median_ms" in frame:
        iqr = _column(frame, "latency_iqr_ms")
        table["latency (ms)"] = [_spread(m, i) for m, i in zip(frame["latency_median_ms"], iqr)]
        table["Δlatency %"] = _column(frame, "delta_latency_median_ms_pct").map(lambda v: _signed(v, 1))
        changes = [latency_change(row) for _, row in frame.iterrows()]
        if any(changes):
            # the paired timing's change and interval; * where the interval excludes zero
            table["Δlatency % (paired, 95 % CI)"] = [
                "" if c is None else f"{c.value:+.1f}{'' if c.includes_zero() else '*'} {interval_text(c.low, c.high, 1)}"
                for c in changes]
        if "throughput_ips" in frame:
            table["images/s"] = frame["throughput_ips"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    if "attention_latency_ms" in frame:
        table["modules alone (ms)"] = frame["attention_latency_ms"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    if "memory_train_peak_bytes" in frame:
        table["train peak (MB)"] = (frame["memory_train_peak_bytes"] / 2**20).map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        table["Δtrain peak %"] = frame["delta_memory_train_peak_bytes_pct"].map(lambda v: _signed(v, 1))
    if "top1_mean" in frame:
        std = frame["top1_std"] if "top1_std" in frame else pd.Series(float("nan"), index=frame.index)
        table["top-1 (%)"] = [_spread(m, s, "±") for m, s in zip(frame["top1_mean"], std)]
        table["Δtop-1"] = frame["delta_top1_mean"].map(lambda v: _signed(v, 2))
        if "delta_top1_test" in frame and frame["delta_top1_test"].astype(bool).any():
            # * on the change where the test finds it significant at 0.05, as in the LaTeX
            table["Δtop-1"] += frame["delta_top1_significant"].map(lambda s: "*" if s is True else "")
            table["Δtop-1 95 % CI"] = [interval_text(low, high, 2)
                                       for low, high in zip(frame["delta_top1_ci_low"], frame["delta_top1_ci_high"])]
            table["test"] = [f"{p_text(p)} ({t})" if t else ""
                             for p, t in zip(frame["delta_top1_p"], frame["delta_top1_test"])]
    if "uncounted_ops" in frame and frame["uncounted_ops"].fillna("").astype(bool).any():
        table["uncounted ops"] = frame["uncounted_ops"].fillna("")
    if "delta_note" in frame and frame["delta_note"].fillna("").astype(bool).any():
        table["note"] = frame["delta_note"].fillna("")
    if (frame["state"] != "COMPLETE").any():
        table["error"] = frame["error"].fillna("")
    return table


def export_grid(rows: list[dict[str, Any]], out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write points.csv (every column) and table.md (the comparison table); return both frames."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = points_frame(rows)
    if not frame.empty:
        # Baseline first within each backbone/input group; otherwise keep the ablation file's order.
        frame = frame.assign(_variant=frame["attention"] != "none")
        frame = frame.sort_values(GROUP + ["_variant"], kind="stable").drop(columns="_variant").reset_index(drop=True)
    frame.to_csv(out_dir / "points.csv", index=False)
    table = comparison_table(frame)
    (out_dir / "table.md").write_text(table.to_markdown(index=False) + "\n" if not table.empty else "(no points)\n")
    return frame, table


UNITS = ("Units: params in millions (M); MACs = multiply-accumulates in billions (G), what most papers call FLOPs; "
         "FLOPs = 2 x MACs + element-wise FLOPs (activations, gates, norms, pools). Deltas are against the `none` "
         "baseline of the same backbone and input.")
TESTS = ("Δtop-1 is the change of the mean over seeds against the baseline, with its 95 % interval and the two-sided "
         "t-test that fits the design: paired t by seed where both were trained on the same seeds, Welch's t otherwise; "
         "`*`: significant at 0.05 (docs/reports.md).")


def _markdown_section(title: str, body: str) -> list[str]:
    return [f"## {title}", "", body.rstrip(), ""]


def write_report(rows: list[dict[str, Any]], out_dir: Path, study: str, source: str = "", figures: bool = True) -> Path:
    """Write points.csv, table.md, table.tex, summary.tex, the plots (PNG and PDF, unless not `figures`) and report.md."""
    from attnbench.report.latex import latex_table
    from attnbench.report.plots import plot_ablations, plot_pareto
    from attnbench.report.published import published_matches, sources_markdown
    from attnbench.report.summary import summary_markdown, summary_tex

    frame, table = export_grid(rows, out_dir)
    (out_dir / "table.tex").write_text(latex_table(frame, study))
    (out_dir / "summary.tex").write_text(summary_tex(frame, study))
    pareto = plot_pareto(frame, out_dir) if figures and not frame.empty else []
    ablations = plot_ablations(frame, out_dir) if figures and not frame.empty else []
    completed = int((frame["state"] == "COMPLETE").sum()) if not frame.empty else 0
    failed = len(frame) - completed

    lines = [f"# Study `{study}`", "",
             f"{len(frame)} points: {completed} completed, {failed} failed"
             + (f"; read from {source}" if source else "")
             + f"; written {datetime.datetime.now().isoformat(timespec='seconds')}.", "", UNITS, ""]
    lines += _markdown_section("Summary: each module at its paper defaults", summary_markdown(frame))
    lines += _markdown_section("Comparison", table.to_markdown(index=False) if not table.empty else "(no points)")
    if "delta_top1_test" in frame and frame["delta_top1_test"].astype(bool).any():
        lines += [TESTS, ""]
    lines += ["Files: `points.csv` (every column of every point), `table.md`, `table.tex` (one booktabs table per "
              "backbone, with caption and label stubs), `summary.tex` (the summary above), both needing "
              "`\\usepackage{booktabs}`; figures as PNG and PDF."
              + (f" Browse the store with `optuna-dashboard {source}`." if source.startswith("sqlite:") else ""), ""]
    if pareto:
        lines += _markdown_section("Pareto front", f"![Pareto plot]({pareto[0].name})")
    if ablations:
        gallery = "\n\n".join(f"![{p.stem}]({p.name})" for p in ablations if p.suffix == ".png")
        lines += _markdown_section("Ablations", "Each figure follows one hyperparameter (or placement) with the "
                                   "others fixed. Params and MACs are what the module adds over the baseline of the "
                                   "same backbone; other metrics are as measured, the baseline dashed; error bars: "
                                   "top-1 std over seeds, half the latency IQR.\n\n" + gallery)
    matches = published_matches(frame)
    if not matches.empty:
        lines += _markdown_section("Published figures", matches.to_markdown(index=False, disable_numparse=True)
                                   + "\n\n" + sources_markdown(matches))
    if failed:
        errors = frame[frame["state"] != "COMPLETE"]
        failures = "\n".join(f"- `{r.label}` on {r.backbone}: {r.error}" for r in errors.itertuples())
        lines += _markdown_section("Failed points", failures)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def study_names(storage: str) -> list[str]:
    """Names of the studies in an Optuna storage; a missing SQLite or journal file is an error, not a new empty store."""
    import optuna

    from attnbench.store.storage import JOURNAL_PREFIX, open_storage

    for prefix in ("sqlite:///", JOURNAL_PREFIX):
        if storage.startswith(prefix) and not Path(storage.removeprefix(prefix).removeprefix("//")).exists():
            raise ConfigError("storage", storage, "an existing store (run --grid first)")
    return list(optuna.get_all_study_names(open_storage(storage)))


def report_studies(storage: str, names: Sequence[str], results_dir: Path) -> list[Path]:
    """Write the report of each named study (none named: every study in the storage); return the report.md paths.

    A study whose stored name cannot be a folder (`..`, a path, control characters: another program
    wrote it to a shared store) is skipped with a warning line, never used to build a path.
    """
    from attnbench.core.paths import check_study_name, check_writable, name_problem, study_dir
    from attnbench.store.storage import redact
    from attnbench.store.study import open_study, trial_rows

    for name in names:
        check_study_name("report", name)
    available = study_names(storage)
    if not available:
        raise ConfigError("storage", redact(storage), "a store with at least one study (run --grid first)")
    for name in names:
        if name not in available:
            raise ConfigError("report", name, "a study in the storage: " + ", ".join(available))
    chosen = list(names) or available
    for name in chosen:
        if (problem := name_problem(name)) is not None:
            print(f"warning: skipping study {name!r} in {redact(storage)}: its name cannot be a folder ({problem})",
                  file=sys.stderr)
    folders = {name: check_writable(study_dir(results_dir, name, "report"), "report")
               for name in chosen if name_problem(name) is None}
    return [write_report(trial_rows(open_study(name, storage)), folder, name, redact(storage))
            for name, folder in folders.items()]
