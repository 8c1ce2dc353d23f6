"""Paper pieces from rows shaped like the shipped studies: LaTeX that compiles without overfull boxes, the summary, Δtop-1 tests.

The rows are synthetic (no grid runs): the default study's 70 points over two backbones with
made-up counts, the digits training study's 7 variants x 3 seeds with README's accuracies, a
search study's sampled points, and a latency study with paired timing columns.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from attnbench.config.ablation import load_ablation
from attnbench.report.latex import MAX_ROWS, latex_table
from attnbench.report.summary import leaderboard, leaderboard_groups, summary_tex
from attnbench.report.tables import write_report

ROOT = Path(__file__).resolve().parents[1]
VAL = 360  # digits' validation images: every accuracy is a multiple of 100 / 360
# correct validation images per seed (seeds 0, 1, 2), chosen to give README's table: mean and std to 2 decimals
DIGITS = {
    "none": (355, 358, 355),      # 98.89 +- 0.48
    "se@2,3": (354, 354, 355),    # 98.43 +- 0.16
    "cbam@2,3": (352, 354, 353),  # 98.06 +- 0.28; lowest where the baseline is (a paired, significant drop)
    "eca@2,3": (356, 357, 356),   # 98.98 +- 0.16
    "dcn": (356, 357, 357),       # 99.07 +- 0.16
    "lka@2,3": (348, 355, 356),   # 98.06 +- 1.21
    "msca@2,3": (353, 354, 355),  # 98.33 +- 0.28
}
DIGITS_COUNTS = {  # (params, MACs) from README's table
    "none": (269_722, 40_600_000), "se@2,3": (271_954, 40_601_920), "cbam@2,3": (272_554, 40_697_900),
    "eca@2,3": (269_740, 40_600_864), "dcn": (398_722, 57_000_000), "lka@2,3": (307_222, 44_900_000),
    "msca@2,3": (317_022, 45_970_000),
}


def point_row(point: Any, **measured: Any) -> dict[str, Any]:
    """A row as the store's trial_rows gives it for `point`, with `measured` as its result."""
    fields = point.to_dict()
    row = {"label": point.variant_label(), "point_hyperparameters": fields.pop("hyperparameters"), **fields}
    return {**row, **measured, "state": "COMPLETE", "error": ""}


def default_rows() -> list[dict[str, Any]]:
    """The default study's 70 points with made-up counts of the real magnitudes (ResNet-50: 25.6 M, 4.09 G)."""
    base = {"cifar_resnet18": (11_173_962, 555_422_720), "resnet50": (25_557_032, 4_089_184_256)}
    rows = []
    for number, point in enumerate(load_ablation(ROOT / "ablations" / "default.yaml").points):
        params, macs = base[point.backbone]
        extra = 0 if point.attention == "none" else 1_000 * (number * 7919 % 21_000) + 17
        rows.append(point_row(point, params=params + extra, macs=macs + 170 * extra, flops=2 * (macs + 170 * extra),
                              attention_params=extra, uncounted_ops=""))
    return rows


def digits_rows() -> list[dict[str, Any]]:
    """The digits training study (ResNet-20, stages 2-3, 3 seeds): per-seed top-1 as the runner stores it."""
    rows = []
    for point in load_ablation(ROOT / "ablations" / "train_digits.yaml").points:
        label = point.variant_label()
        top1 = [100.0 * c / VAL for c in DIGITS[label]]
        summary = scipy_stats.describe(top1)
        params, macs = DIGITS_COUNTS[label]
        rows.append(point_row(point, params=params, macs=macs, flops=2 * macs, attention_params=params - 269_722,
                              uncounted_ops="", top1_mean=summary.mean, top1_std=summary.variance ** 0.5,
                              top1_seeds=top1, seeds=3, epochs=5))
    return rows


def search_rows() -> list[dict[str, Any]]:
    """A digits search's sampled points (one seed each, so no test): varied hyperparameters and stages."""
    from attnbench.config.point import make_point

    sampled = [("none", {}, None), ("se", {"reduction": 37, "gate": "hard_sigmoid"}, (4, 5)),
               ("se", {"reduction": 5}, None), ("eca", {"kernel_size": 7}, (3, 4, 5)),
               ("cbam", {"reduction": 32, "spatial_kernel": 5}, (2, 3, 4, 5)), ("msca", {"scales": (7, 21)}, (4, 5)),
               ("eca", {}, None), ("msca", {}, (3, 4, 5))]
    rows = []
    for number, (module, hyperparameters, stages) in enumerate(sampled):
        extra = {} if stages is None else {"stages": stages}
        point = make_point("cifar_resnet18", module, hyperparameters, input_size=16, num_classes=10, **extra)
        rows.append(point_row(point, params=11_173_962 + 9_000 * number, macs=142_000_000 + 70_000 * number,
                              flops=284_000_000 + 150_000 * number, attention_params=9_000 * number, uncounted_ops="",
                              top1_mean=90.0 + number / 3, top1_seeds=[90.0 + number / 3], seeds=1))
    return rows


def latency_rows() -> list[dict[str, Any]]:
    """A latency study in ResNet-50: two batches x two dtypes, every module, medians, IQR, memory, paired changes."""
    from attnbench.config.point import make_point

    rows = []
    for batch in (1, 32):
        for dtype in ("fp32", "bf16"):
            for number, module in enumerate(("none", "se", "cbam", "eca", "lka", "msca", "dcn")):
                point = make_point("resnet50", module, {}, batch_size=batch, dtype=dtype)
                change = {} if module == "none" else {"latency_change_pct": 3.5 * number - 2.0,
                                                      "latency_change_ci_low_pct": 3.5 * number - 3.1,
                                                      "latency_change_ci_high_pct": 3.5 * number - 0.9}
                macs = batch * (4_089_184_256 + 10**8 * number)
                rows.append(point_row(point, params=25_557_032 + 1_234_567 * number, macs=macs, flops=2 * macs + 10**7,
                                      attention_params=1_234_567 * number, uncounted_ops="",
                                      latency_median_ms=batch * (12.345 + number), latency_iqr_ms=0.567,
                                      memory_inference_peak_bytes=batch * 123_456_789, **change))
    return rows


STUDIES = {"default": default_rows, "train_digits": digits_rows, "digits-search": search_rows, "latency": latency_rows}
LOG_PROBLEMS = re.compile(r"^(!.*|Overfull \\[hv]box.*|LaTeX Warning: Float too large.*)$", re.MULTILINE)


def compile_log(tex: Path, packages: tuple[str, ...] = ("booktabs",)) -> tuple[int, str]:
    """pdflatex `tex` inside a minimal article loading `packages`: the exit status and the log."""
    doc = tex.with_name(f"doc_{tex.stem}.tex")
    doc.write_text("\\documentclass{article}\n" + "".join(f"\\usepackage{{{p}}}\n" for p in packages)
                   + f"\\begin{{document}}\n\\input{{{tex.name}}}\n\\end{{document}}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tex.parent,
                         capture_output=True, text=True, timeout=120)
    return run.returncode, doc.with_suffix(".log").read_text(errors="replace")


def compile_problems(tex: Path, packages: tuple[str, ...] = ("booktabs",)) -> list[str]:
    """The errors, overfull boxes and oversized floats of compiling `tex` (see compile_log)."""
    returncode, log = compile_log(tex, packages)
    problems = LOG_PROBLEMS.findall(log)
    return problems if returncode == 0 or problems else [f"pdflatex exit {returncode}"]


NO_TEX = "pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every study's report written from its synthetic rows; study name -> its folder."""
    out = tmp_path_factory.mktemp("reports")
    for name, rows in STUDIES.items():
        write_report(rows(), out / name, name, "sqlite:///results/attnbench.db", figures=False)  # plots: test_report.py
    return {name: out / name for name in STUDIES}


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason=NO_TEX)
@pytest.mark.parametrize("study", list(STUDIES))
@pytest.mark.parametrize("name", ["table.tex", "summary.tex"])
def test_generated_latex_compiles_without_overfull_boxes(reports: dict[str, Path], study: str, name: str) -> None:
    assert compile_problems(reports[study] / name) == []


def wide_rows() -> list[dict[str, Any]]:
    """The digits study with latency, memory and paired timing too: five metric columns, wider than a text."""
    return [{**row, "latency_median_ms": 12.3 + i, "latency_iqr_ms": 0.4, "memory_inference_peak_bytes": 123_456_789,
             **({} if row["attention"] == "none" else {"latency_change_pct": 3.0 * i, "latency_change_ci_low_pct": 3.0 * i - 2,
                                                       "latency_change_ci_high_pct": 3.0 * i + 2})}
            for i, row in enumerate(digits_rows())]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason=NO_TEX)
def test_a_table_wider_than_the_text_is_scaled_where_graphicx_is_loaded(tmp_path: Path) -> None:
    from attnbench.report.latex import SCALED
    from attnbench.report.tables import points_frame

    (tmp_path / "table.tex").write_text(latex_table(points_frame(wide_rows()), "wide"))
    assert compile_problems(tmp_path / "table.tex", ("booktabs", "graphicx")) == []
    assert SCALED in compile_log(tmp_path / "table.tex", ("booktabs", "graphicx"))[1]
    assert compile_problems(tmp_path / "table.tex")[0].startswith("Overfull \\hbox")  # no graphicx: no error, a warning


def test_default_table_is_one_float_per_backbone_that_fits_a_page(reports: dict[str, Path]) -> None:
    tex = (reports["default"] / "table.tex").read_text()
    per_backbone = len(default_rows()) // 2  # the baseline and the variants of each of the two backbones
    floats = 2 * math.ceil((per_backbone - 1) / (MAX_ROWS - 1))  # a long group continues, its baseline repeated
    assert tex.count(r"\begin{table}") == floats and tex.count(r"\begin{tabular}{lrr}") == floats
    assert r"\caption{Study \texttt{default}: ResNet-18 (CIFAR).}" in tex and r"\label{tab:default-resnet-50}" in tex
    for table in tex.split(r"\begin{table}")[1:]:
        rows = [line for line in table.splitlines() if line.endswith(r"\\")]
        assert 1 + 2 <= len(rows) <= 1 + MAX_ROWS  # header, baseline, variants
        assert "Params in millions; MACs (multiply-accumulates; 1 MAC = 2 FLOPs) in billions." in table
    assert r"\textbf" not in tex  # nothing is "best" among params and MACs: the baseline always has the fewest


def test_long_groups_continue_in_the_next_float_with_the_baseline() -> None:
    from attnbench.report.tables import points_frame

    rows = [r for r in default_rows() if r["backbone"] == "resnet50"]
    many = (rows + rows[1:])[:69]  # 69 rows in one group, every label on one line
    tex = latex_table(points_frame(many), "big")
    tables = tex.split(r"\begin{table}")[1:]
    assert len(tables) == 2 and "(continued, part 2 of 2)" in tables[1] and r"\label{tab:big-resnet-50-2}" in tables[1]
    assert "continued" not in tables[0] and r"\label{tab:big-resnet-50}" in tables[0]
    for table in tables:
        rows_in = [line for line in table.splitlines() if line.endswith(r"\\")]
        assert rows_in[1].startswith("none (baseline) & ") and len(rows_in) - 1 <= MAX_ROWS


def digits_frame() -> pd.DataFrame:
    from attnbench.report.tables import points_frame

    return points_frame(digits_rows())


def test_digits_deltas_carry_paired_t_tests_matching_scipy() -> None:
    frame = digits_frame().set_index("label")
    base = [100.0 * c / VAL for c in DIGITS["none"]]
    for label, counts in DIGITS.items():
        if label == "none":
            continue
        mine = [100.0 * c / VAL for c in counts]
        expected = scipy_stats.ttest_rel(mine, base)
        ci = expected.confidence_interval(0.95)
        row = frame.loc[label]
        assert row["delta_top1_test"] == "paired t"
        assert row["delta_top1_p"] == pytest.approx(expected.pvalue, rel=1e-9)
        assert (row["delta_top1_ci_low"], row["delta_top1_ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
        assert row["delta_top1_significant"] == (expected.pvalue < 0.05)
    assert frame.loc["se@2,3", "delta_top1_mean"] == pytest.approx(-0.4630, abs=1e-4)
    assert frame.loc["none", "delta_top1_test"] == "" and pd.isna(frame.loc["none", "delta_top1_p"])


def test_digits_markdown_shows_each_delta_with_interval_and_test(reports: dict[str, Path]) -> None:
    table = (reports["train_digits"] / "table.md").read_text()
    se = next(line for line in table.splitlines() if "| se@2,3 " in line)
    assert "98.43 ± 0.16" in se and "-0.46" in se and "[-1.90, +0.97]" in se and "p=0.30 (paired t)" in se
    cbam = next(line for line in table.splitlines() if "| cbam@2,3 " in line)
    assert "-0.83*" in cbam and "[-1.52, -0.14]" in cbam and "p=0.035 (paired t)" in cbam  # told apart from seed noise
    report = (reports["train_digits"] / "report.md").read_text()
    assert report.index("## Summary") < report.index("## Comparison") and "paired t by seed" in report
    for label in DIGITS:
        if label != "none":
            assert re.search(rf"\| {re.escape(label)} .*\[[-+]\d+\.\d\d, [-+]\d+\.\d\d\] .*p[=<]", table), label


def test_digits_latex_shows_each_delta_with_interval_and_star(reports: dict[str, Path]) -> None:
    tex = (reports["train_digits"] / "table.tex").read_text()
    # stacked: the change and its interval under the value, so the table fits a single-column text
    assert r"\begin{tabular}[t]{@{}r@{}}98.43$\pm$0.16 \\ {\scriptsize($-0.46$ [$-1.90$, $+0.97$])}\end{tabular}" in tex
    assert r"98.06$\pm$0.28 \\ {\scriptsize($-0.83^{*}$ [$-1.52$, $-0.14$])}" in tex
    assert r"\textbf{99.07}" in tex and tex.count(r"\textbf") == 1  # dcn: the most accurate variant; no bold counts
    assert "(a paired t-test by seed); $^{*}$: significant at 0.05." in tex
    summary = (reports["train_digits"] / "summary.tex").read_text()
    assert r"dcn & $+129$K & $+16.4$M & $+0.19$ {\scriptsize[$-0.87$, $+1.24$]} \\" in summary
    assert r"none (baseline) & 270K & 40.6M & 98.89 \\" in summary


def test_digits_leaderboard_ranks_every_module_at_its_defaults() -> None:
    board = leaderboard(digits_frame())
    assert list(board["module"]) == ["none (baseline)", "dcn", "eca@2,3", "se@2,3", "msca@2,3", "cbam@2,3", "lka@2,3"]
    dcn = board.set_index("module").loc["dcn"]
    assert (dcn["params"], dcn["MACs"], dcn["top-1 (%)"]) == ("+129K", "+16.4M", "+0.19 [-0.87, +1.24]")
    assert dcn["top-1 test"].endswith("(paired t)")


def test_default_summary_takes_each_module_at_paper_defaults() -> None:
    from attnbench.report.tables import points_frame

    frame = points_frame(default_rows())
    groups = leaderboard_groups(frame)
    assert len(groups) == 2
    points = load_ablation(ROOT / "ablations" / "default.yaml").points
    for _, base, modules in groups:
        assert frame.at[base, "label"] == "none"
        backbone = frame.at[base, "backbone"]
        at_defaults = [p.attention for p in points if p.backbone == backbone and p.attention != "none"
                       and p.variant_label() == p.attention]  # each module once, in the file's order
        assert [frame.at[i, "label"] for i in modules] == list(dict.fromkeys(at_defaults))
    tex = summary_tex(frame, "default")
    lines = sum(1 + len(modules) for _, _, modules in groups) + len(groups)  # a title, the baseline, the modules
    assert r"\multicolumn{3}{l}{\textit{ResNet-50}} \\" in tex
    assert tex.count(r"\begin{table}") == math.ceil(lines / MAX_ROWS)  # one float while it fits a page
    floats = tex.split(r"\begin{table}")[1:]
    if len(floats) > 1:  # the default grid's 30 modules in two backbones take two
        assert "continued" not in floats[0] and f"(part 1 of {len(floats)})" in floats[0]
        assert all(f"(continued, part {n} of {len(floats)})" in f for n, f in enumerate(floats[1:], start=2))


def test_search_rows_without_defaults_or_seeds_still_report(reports: dict[str, Path]) -> None:
    board = leaderboard(digits_frame().iloc[0:0])
    assert board.empty
    report = (reports["digits-search"] / "report.md").read_text()
    assert "| none (baseline) |" in report and "| eca " in report  # eca at defaults was sampled
    assert "p=" not in (reports["digits-search"] / "table.md").read_text()  # one seed: nothing to test


def test_latency_study_shows_paired_changes_and_marks_what_is_told_apart(reports: dict[str, Path]) -> None:
    tex = (reports["latency"] / "table.tex").read_text()
    assert tex.count(r"\begin{table}") == 4  # batch x dtype groups
    assert r"{\scriptsize($+1.5^{*}$\% [$+0.4$, $+2.6$])}" in tex  # se: 3.5 - 2.0, interval above zero
    assert r"{\scriptsize($-2.0$\% [" not in tex and "($+5.0^{*}$" in tex
    table = (reports["latency"] / "table.md").read_text()
    assert "+1.5* [+0.4, +2.6]" in table
    board = (reports["latency"] / "report.md").read_text()
    assert "+1.5* % [+0.4, +2.6]" in board


def test_best_is_bold_among_variants_only(reports: dict[str, Path]) -> None:
    tex = (reports["latency"] / "table.tex").read_text()
    first = tex.split(r"\begin{table}")[1]
    bold = re.findall(r"\\textbf\{([^}]*)\}", first)
    assert bold == ["13.35"]  # the fastest variant (se), not the baseline, and nothing in params, MACs or memory


def test_a_study_without_completed_points_still_reports(tmp_path: Path) -> None:
    report = write_report([], tmp_path / "e", "e", figures=False).read_text()
    assert "## Summary: each module at its paper defaults\n\n(no completed points)" in report
    assert (tmp_path / "e" / "summary.tex").read_text().endswith("% (no completed points)\n")
