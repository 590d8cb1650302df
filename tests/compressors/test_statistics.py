"""Unbiasedness and variance of the unbiased compressors over many seeds, against the exact
per-coordinate variance of their definitions (docs/ALGORITHMS.md, Compressors)."""

from __future__ import annotations

import numpy as np
import pytest

from .reference import exact_variance, input_vectors, make_compressors, samples

N = {"identity": 20, "randk": 4000, "randk-k": 3000, "natural": 2500, "qsgd": 3000, "qsgd16": 1500}
SIGMAS = 6.0
CASES = [(c, x) for c in N for x in input_vectors()]


def _stats(comp_id: str, x_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    x_t = input_vectors()[x_id]
    x = x_t.numpy().astype(np.float64)
    q = samples(comp_id, x_id, N[comp_id])
    var = exact_variance(make_compressors()[comp_id], x)
    eps = float(np.finfo(x_t.numpy().dtype).eps)
    return x, q, var, eps


@pytest.mark.parametrize(("comp_id", "x_id"), CASES)
def test_unbiased(comp_id: str, x_id: str) -> None:
    """Every coordinate of the mean of Q(x) is within 6 standard errors of x_i."""
    x, q, var, eps = _stats(comp_id, x_id)
    n = q.shape[0]
    sd = np.sqrt(var)
    tol = SIGMAS * sd / np.sqrt(n) + 8 * eps * (np.abs(x) + sd)
    err = np.abs(q.mean(axis=0) - x)
    assert (err <= tol).all(), f"worst coordinate off by {np.max(err / (tol + 1e-300)):.2f} tol"


@pytest.mark.parametrize(("comp_id", "x_id"), CASES)
def test_variance_matches_definition(comp_id: str, x_id: str) -> None:
    """The empirical E||Q(x) - x||^2 equals the definition's exact variance (6 standard errors)
    and is within omega_for(d) ||x||^2."""
    x, q, var, eps = _stats(comp_id, x_id)
    comp = make_compressors()[comp_id]
    sq = ((q - x) ** 2).sum(axis=1)
    se = sq.std(ddof=1) / np.sqrt(sq.size)
    norm2 = float((x**2).sum())
    target = float(var.sum())
    assert abs(sq.mean() - target) <= SIGMAS * se + 16 * eps * norm2
    bound = comp.omega_for(x.size) * norm2
    if (comp_id, x_id) != ("natural", "tiny-f64"):  # below 2^-126 Natural adds variance
        assert target <= bound * (1 + 1e-9)
        assert sq.mean() <= bound + SIGMAS * se + 16 * eps * norm2


@pytest.mark.parametrize("comp_id", ["randk", "randk-k"])
def test_randk_variance_is_exactly_omega(comp_id: str) -> None:
    """RandK: E||Q(x) - x||^2 = (d/K - 1) ||x||^2, equality in the omega bound (3% here)."""
    x, q, _, _ = _stats(comp_id, "gauss-f32")
    omega = make_compressors()[comp_id].omega_for(x.size)
    ratio = ((q - x) ** 2).sum(axis=1).mean() / (omega * (x**2).sum())
    assert ratio == pytest.approx(1.0, abs=0.03)


def test_natural_worst_case_reaches_one_eighth() -> None:
    """|x_i| = (4/3) 2^a maximises Natural's variance: E||Q(x) - x||^2 = ||x||^2 / 8."""
    x, q, _, _ = _stats("natural", "natural-worst-f64")
    ratio = ((q - x) ** 2).sum(axis=1).mean() / (x**2).sum()
    assert ratio == pytest.approx(1 / 8, rel=0.05)


def test_natural_tiny_values_stay_unbiased_with_bounded_extra_variance() -> None:
    """Below 2^-126 each coordinate adds at most 4^-126/4 to the variance."""
    x, q, var, _ = _stats("natural", "tiny-f64")
    assert (var <= 2.0 ** (2 * -126) / 4 + np.abs(x) ** 2 / 8).all()
    assert set(np.unique(np.abs(q))) <= {0.0, 2.0**-126}
