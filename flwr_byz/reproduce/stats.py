"""The statistics every verdict of RESULTS.md rests on: seed intervals, noise-aware comparisons,
the plateau rule and the worst-case tuning rule.

- ``interval``: the mean of the finite values over seeds and its 95% Student-t interval
  (mean +- t_{0.975, n-1} s / sqrt(n)); one value gives a zero-width interval.
- ``compare``: two intervals differ only when they separate; otherwise "within noise".
- ``plateaued``: the plateau rule: the mean accuracy of the last 10% of the rounds is less than
  1 point above that of the 10% before them.
- ``best_worst_case``: the tuning rule: the candidate whose worst score over the settings
  (attacks) is highest; a candidate within ``tie`` of the best counts as tied, the earlier one
  in the grid wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from scipy.stats import t as student_t

__all__ = [
    "CONFIDENCE",
    "PLATEAU_FRACTION",
    "PLATEAU_POINTS",
    "Check",
    "Interval",
    "Relation",
    "best_worst_case",
    "compare",
    "interval",
    "plateau_gain",
    "plateaued",
    "verdict_of",
]

#: Confidence of every interval.
CONFIDENCE = 0.95
#: The plateau rule: the last ``PLATEAU_FRACTION`` of the rounds gain less than
#: ``PLATEAU_POINTS`` accuracy points over the ``PLATEAU_FRACTION`` before them.
PLATEAU_FRACTION = 0.1
PLATEAU_POINTS = 1.0

#: How interval ``a`` stands to interval ``b``.
Relation = Literal["above", "below", "noise"]


@dataclass(frozen=True)
class Interval:
    """Seed mean ``mean`` of ``n`` finite values and its 95% interval ``[lo, hi]`` (NaN when
    no value is finite)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half(self) -> float:
        """Half the interval's width."""
        return (self.hi - self.lo) / 2

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"45.9 ± 1.8"`` (mean ± half-width, scaled, e.g. a fraction as %); ``"n/a"``."""
        if math.isnan(self.mean):
            return "n/a"
        m, h = self.mean * scale, self.half * scale
        return f"{m:.{digits}f} ± {h:.{digits}f}" if self.n > 1 else f"{m:.{digits}f}"


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of the finite ``values`` and its Student-t ``confidence`` interval."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = math.fsum(finite) / n
    if n == 1:
        return Interval(mean, mean, mean, 1)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def compare(a: Interval, b: Interval, margin: float = 0.0) -> Relation:
    """``"above"`` when ``a``'s interval lies wholly above ``b``'s shifted by ``margin``,
    ``"below"`` when wholly below it, else ``"noise"`` (the intervals overlap, or one is
    empty)."""
    if a.n == 0 or b.n == 0:
        return "noise"
    if a.lo > b.hi + margin:
        return "above"
    if a.hi < b.lo + margin:
        return "below"
    return "noise"


@dataclass(frozen=True)
class Check:
    """One check of a claim's rule: ``holds`` True (it holds beyond noise), False (the
    intervals separate against it) or None (within noise); ``what`` says it in words."""

    what: str
    holds: bool | None

    @classmethod
    def at_least(cls, what: str, a: Interval, b: Interval, margin: float = 0.0) -> Check:
        """``a >= b - margin`` as a parity claim: it fails only when ``a``'s interval lies
        wholly below ``b``'s minus ``margin``; overlapping intervals support it."""
        return cls(what, compare(a, b, -margin) != "below")

    @classmethod
    def above(cls, what: str, a: Interval, b: Interval, margin: float = 0.0) -> Check:
        """``a > b + margin`` as a superiority claim: it holds when the intervals separate in
        its favour, fails when they separate against it, and is within noise otherwise."""
        rel = compare(a, b, margin)
        return cls(what, True if rel == "above" else (None if rel == "noise" else False))

    @property
    def word(self) -> str:
        return {True: "holds", False: "fails", None: "within noise"}[self.holds]


def verdict_of(checks: Sequence[Check | bool]) -> str:
    """All hold: "reproduced"; none fails but some are within noise: "within noise"; some hold
    and some fail: "partly"; none holds: "not reproduced"."""
    states = [c.holds if isinstance(c, Check) else bool(c) for c in checks]
    if all(s is True for s in states):
        return "reproduced"
    if not any(s is False for s in states):
        return "within noise"
    return "partly" if any(s is True for s in states) else "not reproduced"


def plateau_gain(accuracies: Sequence[float], fraction: float = PLATEAU_FRACTION) -> float:
    """Points gained by the last ``fraction`` of the rounds over the ``fraction`` before them
    (accuracies as fractions; NaN when fewer than two rounds per window or a NaN)."""
    k = max(1, int(len(accuracies) * fraction))
    if len(accuracies) < 2 * k or k < 1:
        return math.nan
    last, before = accuracies[-k:], accuracies[-2 * k : -k]
    return 100.0 * (math.fsum(last) / k - math.fsum(before) / k)


def plateaued(
    accuracies: Sequence[float],
    fraction: float = PLATEAU_FRACTION,
    points: float = PLATEAU_POINTS,
) -> bool:
    """The plateau rule: the last ``fraction`` of the rounds gain less than ``points``
    accuracy points over the ``fraction`` before them (a NaN curve has not plateaued)."""
    gain = plateau_gain(accuracies, fraction)
    return not math.isnan(gain) and gain < points


K = TypeVar("K")


def best_worst_case(
    scores: Mapping[K, Sequence[float]] | Mapping[K, Mapping[str, float]], tie: float = 0.0
) -> tuple[K, float]:
    """The tuning rule: the candidate (keys in grid order) whose worst score over its settings
    is highest, a candidate within ``tie`` of the best counting as tied (the earlier wins);
    NaN scores (a diverged run) count as -inf. Returns it and its worst score."""
    if not scores:
        raise ValueError("no candidate to choose from")

    def worst(values: Sequence[float] | Mapping[str, float]) -> float:
        vals = list(values.values()) if isinstance(values, Mapping) else list(values)
        if not vals:
            raise ValueError("a candidate has no score")
        return min(-math.inf if math.isnan(v) else v for v in vals)

    worsts = {k: worst(v) for k, v in scores.items()}
    top = max(worsts.values())
    for key, w in worsts.items():
        if w >= top - tie:
            return key, w
    raise AssertionError("unreachable")  # pragma: no cover
