"""FLTrust's rule (Cao et al., NDSS 2021, Eq. 2-4) against a brute-force reference written
from the paper's equations, and the properties that make it robust."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flwr_byz.aggregators.fltrust import FLTrustRule, fltrust, fltrust_with_scores, trust_scores


def bf_fltrust(x: np.ndarray, g0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 2-4 by explicit loops over clients and coordinates (float64): TS_i = ReLU(cos),
    gbar_i = ||g0|| / ||g_i|| g_i, g = sum TS_i gbar_i / sum TS_j (0 when the sum is 0)."""
    n, d = x.shape
    n0 = math.sqrt(sum(float(v) ** 2 for v in g0))
    scores, out = [], [0.0] * d
    for i in range(n):
        ni = math.sqrt(sum(float(v) ** 2 for v in x[i]))
        dot = sum(float(x[i, k]) * float(g0[k]) for k in range(d))
        ts = max(0.0, dot / (ni * n0)) if ni > 0 and n0 > 0 else 0.0
        scores.append(ts)
        for k in range(d):
            if ts > 0:
                out[k] += ts * (n0 / ni) * float(x[i, k])
    total = sum(scores)
    agg = [v / total for v in out] if total > 0 else [0.0] * d
    return np.array(agg), np.array(scores)


def _case(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    g0 = torch.randn(d, generator=gen, dtype=torch.float64)
    # a mix: near the reference, opposite to it, unrelated, and one zero row
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x[: n // 2] += 2 * g0
    x[n // 2] = -3 * g0
    x[-1] = 0.0
    x = x * torch.rand(n, 1, generator=gen, dtype=torch.float64).mul(10)  # unequal norms
    return x, g0


@pytest.mark.parametrize(("n", "d", "seed"), [(3, 1, 0), (5, 7, 1), (10, 33, 2), (1, 4, 3)])
def test_against_the_brute_force_reference(n: int, d: int, seed: int) -> None:
    x, g0 = _case(n, d, seed)
    want, want_scores = bf_fltrust(x.numpy(), g0.numpy())
    got, scores = fltrust_with_scores(x, g0)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(trust_scores(x, g0).numpy(), want_scores, rtol=1e-12, atol=1e-14)
    assert torch.equal(fltrust(x, g0), got)


def test_float32_in_float32_out_close_to_float64() -> None:
    x, g0 = _case(8, 50, 4)
    got = fltrust(x.float(), g0.float())
    assert got.dtype == torch.float32
    want, _ = bf_fltrust(x.numpy(), g0.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


def test_scaling_an_update_changes_nothing_and_opposite_updates_get_no_trust() -> None:
    """Eq. 3 rescales every update to ||g0||: a scaled (boosted) update weighs no more than
    it did; an update against the reference (sign-flip) has score 0 and is left out."""
    x, g0 = _case(6, 20, 5)
    x[-1] = torch.randn(20, dtype=torch.float64)  # no zero row here
    base, scores = fltrust_with_scores(x, g0)
    boosted = x.clone()
    boosted[0] *= 1e6
    torch.testing.assert_close(fltrust(boosted, g0), base, rtol=1e-9, atol=1e-12)
    assert scores[x.shape[0] // 2] == 0  # the -3 g0 row
    flipped = torch.cat([x, -1e3 * x[:2]])
    torch.testing.assert_close(fltrust(flipped, g0), base, rtol=1e-9, atol=1e-12)


def test_the_aggregate_is_no_longer_than_the_reference() -> None:
    """A convex combination of vectors of norm ||g0||."""
    for seed in range(5):
        x, g0 = _case(7, 15, 10 + seed)
        assert float(torch.linalg.vector_norm(fltrust(x, g0))) <= float(
            torch.linalg.vector_norm(g0)
        ) * (1 + 1e-12)


def test_no_trusted_update_gives_the_zero_update() -> None:
    g0 = torch.tensor([1.0, 2.0, -1.0])
    x = torch.stack([-g0, -2 * g0, torch.zeros(3)])  # opposite, opposite, zero
    got, scores = fltrust_with_scores(x, g0)
    assert torch.equal(got, torch.zeros(3)) and torch.equal(scores, torch.zeros(3))
    got, scores = fltrust_with_scores(torch.randn(4, 3), torch.zeros(3))  # g0 = 0: cos = 0
    assert torch.equal(got, torch.zeros(3)) and torch.equal(scores, torch.zeros(4))


def test_a_single_aligned_update_is_the_reference_direction_at_its_norm() -> None:
    g0 = torch.tensor([3.0, 4.0], dtype=torch.float64)
    got = fltrust(torch.tensor([[10.0, 0.0]], dtype=torch.float64), g0)
    torch.testing.assert_close(got, torch.tensor([5.0, 0.0], dtype=torch.float64))


def test_huge_updates_are_safe_in_float32() -> None:
    """<g_i, g_0> is taken against the unit reference (no ||g_i|| ||g_0|| product); a row
    whose norm overflows float32 gets score 0, and the aggregate stays finite."""
    g0 = torch.tensor([1.0, 1.0])
    x = torch.tensor([[1e18, 1e18], [3e19, 3e19], [1.0, -1.0]])
    got, scores = fltrust_with_scores(x, g0)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(got, g0)


@pytest.mark.parametrize(
    ("x", "g0", "match"),
    [
        (torch.ones(3, 4), torch.ones(3), r"reference .* must be a \[d\] = \[4\] tensor"),
        (torch.ones(3, 4), torch.ones(1, 4), r"must be a \[d\]"),
        (torch.ones(3, 4), torch.tensor([1.0, math.nan, 0, 0]), "reference .* holds NaN"),
        (torch.tensor([[1.0, math.inf]]), torch.ones(2), "NaN or Inf"),
        (torch.ones(4), torch.ones(4), "2-D"),
        (torch.ones(0, 4), torch.ones(4), "n >= 1"),
    ],
)
def test_errors_name_the_problem(x: torch.Tensor, g0: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fltrust(x, g0)


def test_rule_object() -> None:
    rule = FLTrustRule()
    x, g0 = _case(5, 6, 7)
    assert torch.equal(rule(x, g0), fltrust(x, g0))
    assert rule.f == 0 and rule.min_inputs(3) == 1 and rule.needs_reference
    with pytest.raises(ValueError, match="FLTrust takes no Byzantine count"):
        FLTrustRule(f=2)
