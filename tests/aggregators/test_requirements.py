"""The declared input requirements (``min_inputs``, ``max_inputs``, ``accepts``,
``largest_f``) agree exactly with where each rule's own ``ValueError`` fires.

A strategy checks its sample size against the declaration before round 1; if the declaration
said less than the rule needs, every round would still be skipped, if it said more, a working
setup would be refused. So for every rule and wrapper combination, every f up to 3 and every
n around the bound, the rule is run and the outcome compared with ``accepts``.
"""

from __future__ import annotations

import pytest
import torch

from flwr_byz.aggregators import AGGREGATORS, SMEA, get_aggregator
from flwr_byz.aggregators.base import (
    accepts,
    breakdown,
    largest_f,
    max_inputs,
    min_inputs,
    requirement,
)

BASES = sorted(AGGREGATORS)
WRAPPED = [
    f"{w}+{b}"
    for w in ("nnm", "bucketing:2", "bucketing:3", "clipping", "arc", "ctma")
    for b in ("mean", "median", "trimmedmean", "krum", "bulyan", "mda", "caf", "smea", "meamed")
] + ["ctma+nnm+median", "ctma+nnm+krum", "nnm+bucketing:2+krum", "arc+nnm+trimmedmean"]
SPECS = BASES + WRAPPED


def runs(agg: object, n: int) -> bool:
    """Whether the rule runs on ``n`` random inputs (False: its ``ValueError``)."""
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    try:
        agg(x)  # type: ignore[operator]
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("spec", SPECS)
def test_declared_bounds_match_the_rule(spec: str) -> None:
    for f in range(4):
        agg = get_aggregator(spec, f)
        unset = get_aggregator(spec, 0)  # the same rule, asked about f explicitly
        lo = min_inputs(agg)
        assert lo == min_inputs(unset, f)
        for n in range(1, 4 * f + 8):
            assert accepts(agg, n) == runs(agg, n), (spec, f, n, lo)
            assert accepts(unset, n, f) == accepts(agg, n)
        assert runs(agg, lo) or max_inputs(agg) is not None


def test_smea_upper_limit_is_its_refusal() -> None:
    """SMEA refuses C(n, f) > max_subsets: ``max_inputs`` is exactly the last n it takes."""
    for f in (1, 2, 3):
        rule = SMEA(f, max_subsets=60)
        top = max_inputs(rule)
        assert top is not None
        assert runs(rule, top) and not runs(rule, top + 1)
        assert accepts(rule, top) and not accepts(rule, top + 1)
    wrapped = get_aggregator("bucketing:2+smea:max_subsets=60", 2)
    top = max_inputs(wrapped)
    assert top is not None and runs(wrapped, top) and not runs(wrapped, top + 1)


@pytest.mark.parametrize(
    "spec,n,expected",
    [
        ("krum", 5, 1),  # n >= 2f + 3
        ("nnm+krum", 5, 1),
        ("nnm+krum", 10, 3),
        ("krum", 2, None),  # Krum needs 3 even with f = 0
        ("bulyan", 10, 1),  # n >= 4f + 3
        ("trimmedmean", 10, 4),  # n > 2f
        ("median", 10, 4),  # informational f: below half
        ("geomed", 5, 2),
        ("meamed", 10, 4),  # n > f, capped below half
        ("mean", 10, 0),  # not robust
        ("arc+mean", 10, 0),
        ("bucketing:2+krum", 10, 1),  # 5 bucket means: Krum(1)
        ("bucketing:2+krum", 14, 2),  # 7 bucket means: Krum(2)
        ("mda", 100, 24),  # MDA's own limit
    ],
)
def test_largest_f(spec: str, n: int, expected: int | None) -> None:
    agg = get_aggregator(spec)
    assert largest_f(agg, n) == expected
    if expected is not None:
        assert runs(get_aggregator(spec, expected), n)
        if expected < breakdown(agg, n):
            assert not runs(get_aggregator(spec, expected + 1), n)


def test_requirement_text_names_every_part() -> None:
    assert requirement(get_aggregator("nnm+krum", 2)) == "NNM: n > f; Krum: n >= 2f + 3"
    assert "Bulyan: n >= 4f + 3" in requirement(get_aggregator("ctma+bulyan"))


def test_undeclared_callable_is_taken_to_accept_any_n() -> None:
    def plain(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=0)

    assert min_inputs(plain) == 1 and max_inputs(plain) is None and accepts(plain, 1)
