"""Paper reports from the store: booktabs table, plots, published figures, and `bench.py --report / --reproduce`."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from attnbench.cli import main
from attnbench.config.ablation import parse_ablation
from attnbench.core.paths import check_writable
from attnbench.report.common import LATENCY, TOP1, pretty_backbone, si
from attnbench.report.latex import column_digits, escape, latex_table
from attnbench.report.plots import ablation_series, pareto_axes, pareto_front
from attnbench.report.published import PUBLISHED, agrees, published_matches, reproduce, rounds_to
from attnbench.report.tables import export_grid, write_report
from attnbench.run.runner import RunOptions
from attnbench.store.grid import run_grid
from attnbench.store.study import default_storage, open_study, trial_rows

ROOT = Path(__file__).resolve().parents[1]
GRID = {
    "name": "paper",
    "backbones": [{"name": "cifar_resnet18", "input_size": 32, "num_classes": 10}, {"name": "resnet50", "input_size": 224}],
    "variants": [
        {"module": "se", "grid": {"reduction": [8, 16]}},
        {"module": "se", "position": ["pre"]},
        {"module": "lka",
         "variants": [{"kernel_size": 7, "dilation": 2}, {}, {"kernel_size": 28, "dilation": 4}, {"drop_dw": True}]},
        {"module": "eca", "grid": {"kernel_size": [None, 3]}},
    ],
}
# Baselines: CIFAR made up; ResNet-50 torchvision's exact figures, so it matches the published table.
BASE = {"cifar_resnet18": (11_000_000, 500_000_000), "resnet50": (25_557_032, 4_089_184_256)}


def added(point) -> tuple[int, int]:
    """Made-up (params, MACs) a variant adds: simple numbers whose table cells are easy to write down."""
    hp = point.hyperparameters
    if point.attention == "se":
        return (800_000 // hp["reduction"], 400_000 // hp["reduction"]) if point.position == "standard" else (30_000, 15_000)
    if point.attention == "lka":
        return 1_000 * hp["kernel_size"] + hp["dilation"] + 7 * hp["drop_dw"], 2_000_000 * hp["kernel_size"]
    if point.attention == "eca":
        return (36, 9_000) if hp["kernel_size"] is None else (24, 6_000)
    return 0, 0


def fake_measure(point, options) -> dict[str, Any]:
    """Complexity plus latency (median, IQR) and top-1 (mean, std): se(reduction=8) is the most accurate."""
    params, macs = BASE[point.backbone]
    extra_params, extra_macs = added(point)
    top1 = {"none": 90.0, "se": 91.25 if point.hyperparameters.get("reduction") == 8 else 90.5}.get(point.attention, 89.0)
    return {"params": params + extra_params, "macs": macs + extra_macs, "flops": 2 * (macs + extra_macs),
            "attention_params": extra_params, "uncounted_ops": "",
            "latency_median_ms": 2.0 + extra_macs / 1e6, "latency_iqr_ms": 0.2, "top1_mean": top1, "top1_std": 0.3}


def complexity_only(point, options) -> dict[str, Any]:
    row = fake_measure(point, options)
    return {k: row[k] for k in ("params", "macs", "flops", "attention_params", "uncounted_ops")}


def make_store(results: Path, run=fake_measure) -> str:
    check_writable(results)
    storage = default_storage(results)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_grid(parse_ablation(GRID), storage, RunOptions(device="cpu"), progress=False, run=run)
    return storage


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    results = tmp_path_factory.mktemp("results")
    storage = make_store(results)
    rows = trial_rows(open_study("paper", storage))
    frame, _ = export_grid(rows, results / "paper")
    return SimpleNamespace(results=results, storage=storage, rows=rows, frame=frame)


def tables(tex: str) -> list[str]:
    """The table floats of a generated .tex, in order."""
    return tex.split(r"\begin{table}")[1:]


def tabular_rows(tex: str) -> list[str]:
    """The tables' rows: the lines ending in \\\\ between each \\toprule and \\bottomrule."""
    rows = []
    for table in tables(tex):
        body = table[table.index(r"\toprule"):table.index(r"\bottomrule")]
        rows += [line for line in body.splitlines() if line.endswith(r"\\")]
    return rows


def check_tabular(tex: str) -> None:
    """Structure a LaTeX run would choke on: rules, braces, and the same column count on every row of every table."""
    if not tables(tex):
        assert "(no completed points)" in tex
        return
    for table in tables(tex):
        assert table.index(r"\toprule") < table.index(r"\midrule") < table.index(r"\bottomrule")
        assert r"\caption{" in table and r"\label{tab:" in table and r"{\footnotesize " in table  # stub and legend
    code = re.sub(r"\\[{}&%$#_]", "", "\n".join(line for line in tex.splitlines() if not line.startswith("%")))
    depth = 0
    for ch in code:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    for table in tables(tex):
        spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", table).group(1)
        for row in tabular_rows(r"\begin{table}" + table):
            spans = [int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", cell)) else 1
                     for cell in re.split(r"(?<!\\)&", row)]
            assert sum(spans) == len(spec), row


def cells(tex: str, variant: str, group: int = 0) -> list[str]:
    """The cells of the row for `variant` in the group-th backbone's table."""
    for row in tabular_rows(r"\begin{table}" + tables(tex)[group]):
        parts = [p.strip() for p in re.split(r"(?<!\\)&", row.removesuffix(r"\\"))]
        if parts[0] == variant:
            return parts
    raise AssertionError(f"{variant} not in group {group}")


def stacked(value: str, change: str) -> str:
    """A cell with its change under the value, as tables with four metric columns print it."""
    return r"\begin{tabular}[t]{@{}r@{}}" + value + r" \\ {\scriptsize" + change + r"}\end{tabular}"


def test_latex_table_cells_bold_best_and_deltas(store: SimpleNamespace) -> None:
    tex = latex_table(store.frame, "paper")
    check_tabular(tex)
    assert len(tables(tex)) == 2  # one float per backbone, the backbone in its caption
    assert r"\caption{Study \texttt{paper}: ResNet-18 (CIFAR).}" in tex and r"\label{tab:paper-resnet-50}" in tex
    assert tabular_rows(tex)[0] == r"Module & Params (M) & MACs (G) & Latency (ms) & Top-1 (\%) \\"
    assert len(tabular_rows(tex)) == 2 + len(store.frame)  # a header per table + one row per variant
    assert cells(tex, "none (baseline)") == [  # the baseline's counts are the smallest, never "best"
        "none (baseline)", "11.00", "0.500", "2.00$\\pm$0.10", "90.00$\\pm$0.30"]
    assert cells(tex, "se(reduction=8)") == [
        "se(reduction=8)", stacked("11.10", "($+100$K)"), stacked("0.500", "($+50$K)"),
        stacked(r"2.05$\pm$0.10", r"($+2.5$\%)"), stacked(r"\textbf{91.25}$\pm$0.30", "($+1.25$)")]
    assert cells(tex, r"lka(drop\_dw=true)")[1] == stacked("11.02", "($+21$K)")  # underscore escaped
    assert cells(tex, "eca(kernel\\_size=3)")[1] == stacked("11.00", "($+24$)")
    resnet = cells(tex, "none (baseline)", group=1)
    assert resnet[:3] == ["none (baseline)", "25.56", "4.089"]
    for group in (0, 1):
        rows = [[p.strip() for p in re.split(r"(?<!\\)&", r)] for r in tabular_rows(r"\begin{table}" + tables(tex)[group])]
        bold = {(r[0], column) for r in rows[1:] for column, cell in enumerate(r) if r"\textbf" in cell}
        assert ("se(reduction=8)", 4) in bold  # the most accurate variant
        latencies = {r[0]: float(re.search(r"(?:textbf\{)?(\d+\.\d+)", r[3]).group(1))
                     for r in rows[1:] if r[0] != "none (baseline)"}
        fastest = {name for name, v in latencies.items() if v == min(latencies.values())}
        assert bold == {("se(reduction=8)", 4)} | {(name, 3) for name in fastest}  # top-1 and latency only


def test_latex_table_omits_failures_and_handles_no_optional_columns(store: SimpleNamespace) -> None:
    frame = store.frame.drop(columns=["latency_median_ms", "latency_iqr_ms", "top1_mean", "top1_std"]).copy()
    frame.loc[frame["label"] == "eca", "state"] = "FAIL"
    tex = latex_table(frame, "paper")
    check_tabular(tex)
    assert "2 failed points omitted" in tex and tex.count(r"\begin{tabular}{lrr}") == 2
    assert tabular_rows(tex)[0] == r"Module & Params (M) & MACs (G) \\"
    assert len(tabular_rows(tex)) == 2 + 20 - 2
    assert r"\textbf" not in tex  # nothing is best among counts
    assert cells(tex, "se(reduction=8)")[1] == r"11.10 {\scriptsize($+100$K)}"  # two metric columns: one line
    check_tabular(latex_table(frame.iloc[0:0], "empty"))


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_table_compiles_in_a_booktabs_document(store: SimpleNamespace, tmp_path: Path) -> None:
    (tmp_path / "table.tex").write_text(latex_table(store.frame, "paper"))
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                      "\\input{table.tex}\n\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "Overfull" not in (tmp_path / "doc.log").read_text(errors="replace")


def test_escape_makes_every_special_character_literal() -> None:
    assert escape("a_b&c%d$e#f{g}h~i^j\\k<l>m|n") == (
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k\textless{}l\textgreater{}m\textbar{}n")


def test_column_digits_keep_three_significant_figures() -> None:
    from attnbench.report.common import MACS, PARAMS

    assert column_digits(PARAMS, [25.557, 11.17]) == 2
    assert column_digits(MACS, [4.089, 0.555]) == 3
    assert column_digits(MACS, [0.0412]) == 4 and column_digits(MACS, [0.0000041]) == 6  # capped at 3 extra


def test_si_prefixes() -> None:
    assert [si(v) for v in (2_530_992, 86, -1_234, 999_600, 999_400, 0, 3.426e9)] == [
        "+2.53M", "+86", "-1.23K", "+1M", "+999K", "+0", "+3.43G"]


def test_pretty_backbone_names() -> None:
    assert [pretty_backbone(n) for n in ("resnet50", "cifar_resnet18", "van_b0", "mscan_t", "other")] == [
        "ResNet-50", "ResNet-18 (CIFAR)", "VAN-B0", "MSCAN-T", "other"]


@pytest.mark.parametrize("x,y,maximize,front", [
    ([1, 2, 3, 4], [4, 3, 5, 1], False, [0, 1, 3]),  # (3, 5) costs more on both axes than (2, 3)
    ([1, 2, 3, 4], [70, 75, 72, 80], True, [0, 1, 3]),  # accuracy up, cost up: (3, 72) is beaten by (2, 75)
    ([1, 1, 2], [5, 3, 3], False, [1]),  # equal x: only the lower y; (2, 3) is no better than (1, 3)
    ([3], [1], True, [0]),
])
def test_pareto_front(x: list[float], y: list[float], maximize: bool, front: list[int]) -> None:
    assert pareto_front(x, y, maximize) == front


def test_ablation_series_follow_one_axis_at_a_time(store: SimpleNamespace) -> None:
    found = {(s.group[0], s.module, s.axis): s for s in ablation_series(store.frame)}
    expected = {(b, m, a) for b in BASE for m, a in (("se", "reduction"), ("se", "position"), ("lka", "kernel_size"),
                                                      ("eca", "kernel_size"))}
    assert set(found) == expected  # no series along the boolean drop_dw, none along dilation (locked to K)
    lka = found[("resnet50", "lka", "kernel_size")]
    assert lka.locked == ("dilation",)
    assert [store.frame.loc[i, "label"] for i in lka.rows] == [
        "lka(kernel_size=7, dilation=2)", "lka", "lka(kernel_size=28, dilation=4)"]
    eca = found[("cifar_resnet18", "eca", "kernel_size")]
    assert [store.frame.loc[i, "label"] for i in eca.rows] == ["eca", "eca(kernel_size=3)"]  # adaptive (None) first
    position = found[("cifar_resnet18", "se", "position")]
    assert [store.frame.loc[i, "position"] for i in position.rows] == ["standard", "pre"]


def test_pareto_axes_prefer_accuracy(store: SimpleNamespace) -> None:
    (x, _), (y, _), maximize = pareto_axes(store.frame)
    assert (x, y, maximize) == (LATENCY, TOP1, True)
    (x, _), (y, _), maximize = pareto_axes(store.frame.drop(columns=["top1_mean"]))
    assert (x.short, y.short, maximize) == ("MACs", "Params", False)


def check_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 400
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn


@pytest.mark.parametrize("with_accuracy", [True, False])
def test_write_report_writes_every_file(tmp_path: Path, with_accuracy: bool) -> None:
    storage = make_store(tmp_path, fake_measure if with_accuracy else complexity_only)
    out = tmp_path / "paper"
    path = write_report(trial_rows(open_study("paper", storage)), out, "paper", "sqlite:///x")
    report = path.read_text()
    assert path == out / "report.md" and "20 points: 20 completed, 0 failed" in report
    check_tabular((out / "table.tex").read_text())
    check_tabular((out / "summary.tex").read_text())
    assert report.index("## Summary: each module at its paper defaults") < report.index("## Comparison")
    assert len(pd.read_csv(out / "points.csv")) == 20  # 2 backbones x (baseline, 3 se, 4 lka, 2 eca)
    for stem in ("pareto", "ablation_se_reduction", "ablation_se_position", "ablation_lka_kernel_size",
                 "ablation_eca_kernel_size"):
        check_png(out / f"{stem}.png")
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
        assert f"]({stem}.png)" in report
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        ["pareto.png", "ablation_se_reduction.png", "ablation_se_position.png", "ablation_lka_kernel_size.png",
         "ablation_eca_kernel_size.png"])
    published = report[report.index("## Published figures"):].splitlines()
    resnet50 = next(line for line in published if line.startswith("| ResNet-50 "))
    assert "25,557,032" in resnet50 and "4.0892" in resnet50 and "✗" not in resnet50
    se = next(line for line in published if line.startswith("| SE-ResNet-50 (r=16) "))
    assert "25,607,032" in se and "✗" in se  # the made-up SE blocks are not the paper's


def test_published_rows_match_store_points_per_image(store: SimpleNamespace) -> None:
    frame = store.frame.copy()
    frame.loc[frame["backbone"] == "resnet50", "batch_size"] = 4  # MACs are per batch in the store
    frame.loc[frame["backbone"] == "resnet50", "macs"] *= 4
    matches = published_matches(frame).set_index("model")
    assert list(matches.index) == ["ResNet-50", "SE-ResNet-50 (r=16)"]  # the other store points are not published models
    assert matches.loc["ResNet-50", "MACs (G)"] == "4.0892" and matches.loc["ResNet-50", "MACs ok"] == "✓"
    assert matches.loc["SE-ResNet-50 (r=16)", "params ok"] == "✗"


def test_rounding_agreement() -> None:
    assert rounds_to(28_088_024, "28.1", 1e6) and rounds_to(4_089_184_256, "4.089", 1e9)
    assert rounds_to(864_224_000, "0.9", 1e9) and not rounds_to(8_925_292_032, "9.0", 1e9)
    assert not rounds_to(45_149_864, "45.2", 1e6)  # 45.149864 rounds once to 45.1
    assert rounds_to(4_105_000, "4.11", 1e6)  # half up, not to even
    assert agrees(11_689_512, 11_689_512, 1e6) and not agrees(11_689_513, 11_689_512, 1e6)


def test_reproduction_of_published_counts() -> None:
    chosen = {"ResNet-18", "SE-ResNet-50 minus ResNet-50", "ResNet-50", "VAN-B0, LKA (K=7, d=2)", "MSCAN-L"}
    table = reproduce(tuple(e for e in PUBLISHED if e.model in chosen), macs=None).set_index("model")
    assert table.loc["ResNet-18", "params"] == "11,689,512" and table.loc["ResNet-18", "params ok"] == "✓"
    assert table.loc["SE-ResNet-50 minus ResNet-50", "params"] == "2,530,992"  # the SE blocks alone
    assert table.loc["SE-ResNet-50 minus ResNet-50", "params ok"] == "✓"
    assert table.loc["VAN-B0, LKA (K=7, d=2)", ["params", "published params", "Δ params", "params ok"]].tolist() == [
        "4,027,400", "4.03 M", "-2.6K", "✓"]
    assert table.loc["MSCAN-L", "params ok"] == "✗"


def test_reproduction_macs_of_resnet18() -> None:
    (row,) = reproduce(tuple(e for e in PUBLISHED if e.model == "ResNet-18")).to_dict("records")
    assert (row["MACs (G)"], row["published MACs (G)"], row["MACs ok"]) == ("1.8141", "1.814", "✓")


def test_cli_reproduce_writes_and_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import attnbench.report.published as published

    subset = tuple(e for e in PUBLISHED if e.model in ("ResNet-18", "CBAM-ResNet-50"))
    monkeypatch.setattr(published, "reproduce", lambda: reproduce(subset, macs=None))
    assert main(["--reproduce", "--results", str(tmp_path)]) == 0
    text = (tmp_path / "reproduction.md").read_text()
    assert text in capsys.readouterr().out
    assert "| CBAM-ResNet-50 " in text and "28.09 M" in text and "Sources:" in text


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # three fresh interpreters importing torch
def test_cli_report_every_study_and_bad_names(store: SimpleNamespace, tmp_path: Path) -> None:
    shutil.copy(store.results / "attnbench.db", tmp_path / "attnbench.db")
    done = bench("--report", "--results", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "paper" / "report.md")
    assert (tmp_path / "paper" / "table.tex").exists() and (tmp_path / "paper" / "pareto.pdf").exists()
    unknown = bench("--report", "nosuch", "--results", str(tmp_path), cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        "bench.py: error: report='nosuch' is not allowed: a study in the storage: paper"]
    empty = bench("--report", "--results", str(tmp_path / "empty"), cwd=tmp_path)
    assert empty.returncode == 2 and "run --grid first" in empty.stderr and not (tmp_path / "empty" / "attnbench.db").exists()
