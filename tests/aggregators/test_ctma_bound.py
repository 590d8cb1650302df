"""CTMA (Dahan & Levy 2024; docs/ALGORITHMS.md, CTMA) against the bound its definition gives.

CTMA keeps the S, |S| = m - f, inputs closest to the anchor a = base(x) and returns their
mean. For any honest set G of m - f inputs, S and G differ in k <= f inputs on each side, and
every kept input lies within r = max_{i in G} ||x_i - a|| of a (the (m - f)-th smallest
distance is at most the largest over G), so

    ||CTMA(x) - mean(G)|| <= 2 f / (m - f) * max_{i in G} ||x_i - a||.

The tests place f Byzantine inputs adversarially (far, near the boundary, colluding) for every
base rule of the issue and check the bound and CTMA's composition with ``get_aggregator``.
"""

from __future__ import annotations

import pytest
import torch

from flwr_byz.aggregators import CTMA, get_aggregator

BASES = ["median", "trimmedmean", "krum", "geomed", "mean", "nnm+median"]


def _inputs(m: int, f: int, d: int, kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    honest = torch.randn(m - f, d, generator=g, dtype=torch.float64)
    center = honest.mean(0)
    spread = float((honest - center).norm(dim=1).max())
    if kind == "far":
        byz = center + 100.0 * torch.randn(f, d, generator=g, dtype=torch.float64)
    elif kind == "boundary":  # just inside the honest radius, all on one side
        direction = torch.randn(d, generator=g, dtype=torch.float64)
        byz = (center + 0.99 * spread * direction / direction.norm()).expand(f, d).clone()
    else:  # "collude": one point, a few honest radii away
        byz = (center + 3.0 * spread * torch.ones(d, dtype=torch.float64) / d**0.5).expand(f, d)
        byz = byz.clone()
    x = torch.cat([honest, byz])
    return x[torch.randperm(m, generator=g)], honest


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", ["far", "boundary", "collude"])
@pytest.mark.parametrize("seed", range(5))
def test_output_within_the_bound(base: str, kind: str, seed: int) -> None:
    m, f, d = 17, 4, 6
    x, honest = _inputs(m, f, d, kind, seed)
    rule = get_aggregator(f"ctma+{base}", f=f)
    out = rule(x)
    anchor = get_aggregator(base, f=f)(x)
    radius = float((honest - anchor).norm(dim=1).max())
    bound = 2 * f / (m - f) * radius
    assert float((out - honest.mean(0)).norm()) <= bound + 1e-9


@pytest.mark.parametrize("base", BASES)
def test_spec_wraps_the_base(base: str) -> None:
    rule = get_aggregator(f"ctma+{base}", f=3)
    assert isinstance(rule, CTMA) and rule.f == 3


def test_no_byzantine_far_input_survives() -> None:
    """With the Byzantine inputs far away, CTMA is the honest mean exactly."""
    m, f = 17, 8
    x, honest = _inputs(m, f, 5, "far", 0)
    out = get_aggregator("ctma+median", f=f)(x)
    torch.testing.assert_close(out, honest.mean(0), atol=1e-12, rtol=0)


def test_mean_of_the_m_minus_f_closest_to_the_anchor() -> None:
    """The definition, brute force: sort by distance to base(x) (ties by index), average."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 4, generator=g, dtype=torch.float64)
    f = 3
    anchor = get_aggregator("geomed", f=f)(x)
    dist = [(float((row - anchor).norm()), i) for i, row in enumerate(x)]
    keep = [i for _, i in sorted(dist)[: 11 - f]]
    expected = x[keep].mean(0)
    torch.testing.assert_close(get_aggregator("ctma+geomed", f=f)(x), expected, atol=1e-6, rtol=0)
