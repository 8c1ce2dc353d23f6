"""Statistics on deltas: the t-tests and intervals against scipy and against values worked by hand."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from attnbench.report.significance import add_top1_tests, latency_change, p_text, seed_ids, top1_test
from attnbench.report.stats import PAIRED, WELCH, compare_seeds, interval, paired_t, seeds_match, welch_t

A = [98.61, 99.44, 98.61, 97.50, 98.90]
B = [98.33, 98.33, 98.61, 97.20, 98.00]


def test_paired_t_matches_scipy() -> None:
    ours = paired_t(A, B)
    theirs = scipy_stats.ttest_rel(A, B)
    ci = theirs.confidence_interval(0.95)
    assert ours.test == PAIRED and ours.dof == 4 and ours.n_variant == ours.n_baseline == 5
    assert ours.delta == pytest.approx(sum(A) / 5 - sum(B) / 5)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-12)
    assert (ours.ci_low, ours.ci_high) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))


def test_welch_t_matches_scipy() -> None:
    ours = welch_t(A, B[:3])
    theirs = scipy_stats.ttest_ind(A, B[:3], equal_var=False)
    ci = theirs.confidence_interval(0.95)
    assert ours.test == WELCH and ours.dof == pytest.approx(theirs.df)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-12)
    assert (ours.ci_low, ours.ci_high) == (pytest.approx(ci.low, rel=1e-12), pytest.approx(ci.high, rel=1e-12))


def test_paired_t_by_hand() -> None:
    # differences 1, 2, 3: mean 2, s = 1, se = 1/sqrt(3); t = 2 sqrt(3) on 2 degrees of freedom, whose
    # two-sided p is 1 - |t| / sqrt(t^2 + 2) = 1 - sqrt(12/14); t(0.975, 2) = 4.302653
    test = paired_t([11, 12, 13], [10, 10, 10])
    assert test.delta == 2 and test.dof == 2
    assert test.p_value == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)  # 0.0742
    half = 4.302652729911275 / math.sqrt(3)
    assert (test.ci_low, test.ci_high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert not test.significant()


def test_welch_t_by_hand() -> None:
    # means 2 and 6, variances 1 and 4 over 3 runs each: se^2 = 1/3 + 4/3; nu = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    test = welch_t([1, 2, 3], [4, 6, 8])
    assert test.delta == -4 and test.dof == pytest.approx(50 / 17)
    t = -4 / math.sqrt(5 / 3)
    assert test.p_value == pytest.approx(2 * scipy_stats.t.cdf(t, 50 / 17))  # 0.055: not significant
    assert not test.significant() and test.significant(alpha=0.06)


def test_the_design_chooses_the_test() -> None:
    assert compare_seeds(A, B, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]).test == PAIRED
    assert compare_seeds(A, B, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]).test == WELCH  # other seeds: independent samples
    assert compare_seeds(A, B).test == WELCH  # seeds unknown
    assert compare_seeds(A, B[:3], [0, 1, 2, 3, 4], [0, 1, 2]).test == WELCH
    assert compare_seeds([98.0], [97.0], [0], [0]) is None  # one run a side: nothing to test
    assert compare_seeds(A, [97.0]) is None
    assert seeds_match([0, 1, 2], [0, 1, 2], 3, 3) and not seeds_match([0, 1, 2], [0, 2, 1], 3, 3)


def test_identical_runs_have_no_test() -> None:
    test = paired_t([99.0, 99.0, 99.0], [98.0, 98.0, 98.0])
    assert (test.delta, test.ci_low, test.ci_high) == (1.0, 1.0, 1.0)
    assert math.isnan(test.p_value) and not test.significant() and p_text(test.p_value) == "n/a"


def test_bad_samples_are_errors() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_t([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="two pairs"):
        paired_t([1], [2])
    with pytest.raises(ValueError, match="two values on each side"):
        welch_t([1, 2], [3])


def row(**fields: object) -> pd.Series:
    return pd.Series(fields, dtype=object)


def test_seed_ids_from_what_rows_carry() -> None:
    assert seed_ids(row(seeds=3, top1_seeds=[1, 2, 3]), 3) == [0, 1, 2]  # the runner's count: positions in train.seeds
    assert seed_ids(row(seeds=[7, 8, 9]), 3) == [7, 8, 9]
    assert seed_ids(row(train_seeds=[4, 5], seeds=2), 2) == [4, 5]
    assert seed_ids(row(train_seeds="[4, 5]"), 2) == [4, 5]  # as read back from a CSV
    assert seed_ids(row(seeds=2), 3) is None and seed_ids(row(), 3) is None


def test_top1_test_of_rows() -> None:
    base = row(attention="none", top1_seeds=B[:3], seeds=3)
    assert top1_test(row(top1_seeds=A[:3], seeds=3), base).test == PAIRED
    assert top1_test(row(top1_seeds=A[:3], train_seeds=[3, 4, 5]), row(top1_seeds=B[:3], train_seeds=[0, 1, 2])).test == WELCH
    assert top1_test(row(top1_seeds=A, seeds=5), base).test == WELCH
    assert top1_test(row(top1_seeds=[98.0], seeds=1), base) is None
    assert top1_test(row(top1_mean=98.0), base) is None


def test_add_top1_tests_against_each_groups_baseline() -> None:
    frame = pd.DataFrame([
        {"backbone": "a", "attention": "none", "top1_seeds": [90.0, 91.0, 92.0], "seeds": 3},
        {"backbone": "a", "attention": "se", "top1_seeds": [91.0, 93.0, 92.5], "seeds": 3},
        {"backbone": "b", "attention": "none", "top1_seeds": [50.0, 51.0, 49.0], "seeds": 3},
        {"backbone": "b", "attention": "se", "top1_seeds": [60.0, 61.0, 59.5], "seeds": 3},
        {"backbone": "c", "attention": "se", "top1_seeds": [60.0, 61.0, 59.5], "seeds": 3},  # no baseline
    ])
    tested = add_top1_tests(frame, ["backbone"])
    expected = scipy_stats.ttest_rel([60.0, 61.0, 59.5], [50.0, 51.0, 49.0])
    assert tested.loc[3, "delta_top1_p"] == pytest.approx(expected.pvalue) and tested.loc[3, "delta_top1_significant"] is True
    assert list(tested["delta_top1_test"]) == ["", "paired t", "", "paired t", ""]
    assert tested[["delta_top1_ci_low", "delta_top1_p"]].iloc[[0, 2, 4]].isna().all().all()


def test_latency_change_needs_all_three_columns() -> None:
    change = latency_change(row(latency_change_pct=3.0, latency_change_ci_low_pct=-0.5, latency_change_ci_high_pct=6.0))
    assert change.includes_zero() and not interval(3.0, 1.0, 6.0).includes_zero()
    assert latency_change(row(latency_change_pct=3.0)) is None
    assert latency_change(row(latency_change_pct=3.0, latency_change_ci_low_pct=float("nan"),
                              latency_change_ci_high_pct=6.0)) is None


@pytest.mark.parametrize("p,text", [(0.2998, "p=0.30"), (0.0496, "p=0.050"), (0.035, "p=0.035"), (0.0042, "p=0.004"),
                                    (0.00004, "p<0.001"), (float("nan"), "n/a")])
def test_p_values_read_as_a_reader_expects(p: float, text: str) -> None:
    assert p_text(p) == text
