"""The statistics of the verdicts: intervals against textbook values, noise-aware checks, the
plateau rule and the worst-case tuning rule."""

from __future__ import annotations

import math

import pytest

from flwr_byz.reproduce.stats import (
    Check,
    Interval,
    best_worst_case,
    compare,
    interval,
    plateau_gain,
    plateaued,
    verdict_of,
)


def test_interval_matches_the_student_t_formula() -> None:
    # five values: mean 0.5, sample sd sqrt(0.025); t_{0.975, 4} = 2.776445105
    iv = interval([0.3, 0.4, 0.5, 0.6, 0.7])
    half = 2.776445105 * math.sqrt(0.025) / math.sqrt(5)
    assert iv.n == 5 and iv.mean == pytest.approx(0.5)
    assert iv.lo == pytest.approx(0.5 - half, abs=1e-9)
    assert iv.hi == pytest.approx(0.5 + half, abs=1e-9)
    assert iv.fmt() == f"50.0 ± {100 * half:.1f}"


def test_interval_skips_non_finite_values_and_handles_one_or_none() -> None:
    assert interval([0.2, math.nan, 0.4]).n == 2
    one = interval([0.25])
    assert (one.mean, one.lo, one.hi, one.fmt()) == (0.25, 0.25, 0.25, "25.0")
    empty = interval([math.nan])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.fmt() == "n/a"


def test_compare_counts_a_difference_only_when_the_intervals_separate() -> None:
    a, b = Interval(0.8, 0.78, 0.82, 5), Interval(0.7, 0.65, 0.75, 5)
    assert compare(a, b) == "above" and compare(b, a) == "below"
    overlapping = Interval(0.76, 0.74, 0.79, 5)
    assert compare(overlapping, a) == "noise" == compare(a, overlapping)
    assert compare(a, b, margin=0.05) == "noise"  # 0.78 > 0.75 + 0.05 is false
    assert compare(a, Interval(math.nan, math.nan, math.nan, 0)) == "noise"


def test_checks_and_verdicts() -> None:
    hi, lo = Interval(0.9, 0.88, 0.92, 5), Interval(0.5, 0.45, 0.55, 5)
    close = Interval(0.89, 0.86, 0.91, 5)
    assert Check.above("x", hi, lo).holds is True
    assert Check.above("x", lo, hi).holds is False
    assert Check.above("x", close, hi).holds is None  # within noise
    assert Check.at_least("x", close, hi).holds is True  # parity holds while they overlap
    assert Check.at_least("x", lo, hi).holds is False
    assert Check.at_least("x", lo, hi, margin=0.5).holds is True
    t, f, n = Check("a", True), Check("b", False), Check("c", None)
    assert verdict_of([t, t]) == "reproduced"
    assert verdict_of([t, n]) == "within noise"
    assert verdict_of([n]) == "within noise"
    assert verdict_of([t, f, n]) == "partly"
    assert verdict_of([f, n]) == "not reproduced"
    assert verdict_of([True, False]) == "partly"
    assert [c.word for c in (t, f, n)] == ["holds", "fails", "within noise"]


def test_plateau_rule_compares_the_last_tenth_with_the_tenth_before() -> None:
    rising = [i / 100 for i in range(100)]  # +10 points per tenth
    assert plateau_gain(rising) == pytest.approx(10.0)
    assert not plateaued(rising)
    flat = [0.5] * 80 + [0.9] * 20  # jumped, then flat over the last two tenths
    assert plateau_gain(flat) == pytest.approx(0.0) and plateaued(flat)
    assert not plateaued([0.5])  # too short to tell
    assert not plateaued([0.1, 0.2, math.nan, 0.3])


def test_best_worst_case_picks_the_best_worst_score_and_breaks_ties_by_grid_order() -> None:
    scores = {
        "lr=0.1": {"none": 0.9, "alie": 0.6},
        "lr=0.3": {"none": 0.95, "alie": 0.7},
        "lr=1.0": {"none": 0.97, "alie": math.nan},  # diverged: worst
    }
    assert best_worst_case(scores) == ("lr=0.3", 0.7)
    assert best_worst_case(scores, tie=0.15)[0] == "lr=0.1"
    with pytest.raises(ValueError, match="no candidate"):
        best_worst_case({})
