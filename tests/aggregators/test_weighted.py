"""Weighted forms: Mean.weighted, Median.weighted, GeometricMedian.weighted against brute force.

Mean: ``sum_i w_i x_i / sum_i w_i``. Median: per column, the mean of the first sorted value
whose cumulative weight reaches W/2 and the first that exceeds it (Median.weighted's
docstring), by a NumPy loop. GeometricMedian: the objective ``sum_i w_i ||z - x_i||`` is
minimal at the output (no random perturbation lowers it), and integer weights act as repeated
rows. Equal weights give the unweighted rules; bad weights raise ValueError.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_byz.aggregators import GeometricMedian, Mean, Median
from flwr_byz.aggregators.base import normalized_weights

DTYPES = [torch.float32, torch.float64]
RULES = {"mean": Mean(), "median": Median(), "geomed": GeometricMedian()}


def _x(n: int, d: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _random_weights(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1


def bf_weighted_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w[:, None] * x).sum(axis=0) / w.sum()


def bf_weighted_median(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Column by column, in exact-ish float64: sort, cumulate, pick the two order statistics."""
    total = float(w.sum())
    out = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        order = sorted(range(x.shape[0]), key=lambda i: (x[i, j], i))
        cum, lo, hi = 0.0, None, None
        for i in order:
            cum += float(w[i])
            if lo is None and 2 * cum >= total * (1 - 1e-12):
                lo = x[i, j]
            if hi is None and 2 * cum > total * (1 + 1e-12):
                hi = x[i, j]
                break
        out[j] = (lo + hi) / 2
    return out


def objective(z: np.ndarray, x: np.ndarray, w: np.ndarray) -> float:
    return float((w * np.linalg.norm(x - z, axis=1)).sum())


# --- Mean ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_weighted_mean_brute_force(dtype: torch.dtype, n: int) -> None:
    x, w = _x(n, 9, dtype), _random_weights(n)
    out = Mean().weighted(x, w)
    assert out.dtype == dtype and out.shape == (9,)
    expected = bf_weighted_mean(x.double().numpy(), w.numpy())
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=tol, atol=tol)


# --- Median ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_median_brute_force_random_weights(n: int, seed: int) -> None:
    x, w = _x(n, 40, seed=seed), _random_weights(n, seed + 10)
    out = Median().weighted(x, w)
    np.testing.assert_array_equal(out.numpy(), bf_weighted_median(x.numpy(), w.numpy()))


@pytest.mark.parametrize("n", [2, 4, 6, 7, 9])
def test_weighted_median_brute_force_integer_weights_with_ties(n: int) -> None:
    """Integer weights (sample counts) often put W/2 exactly on a boundary: the mean of two."""
    x = _x(n, 200, seed=n)
    w = torch.arange(1, n + 1, dtype=torch.float64)
    expected = bf_weighted_median(x.numpy(), w.numpy())
    np.testing.assert_array_equal(Median().weighted(x, w).numpy(), expected)


def test_weighted_median_a_majority_weight_wins() -> None:
    x = _x(5, 30)
    w = torch.tensor([1.0, 1.0, 10.0, 1.0, 1.0])
    assert torch.equal(Median().weighted(x, w), x[2])


@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(torch.float32),
        torch.float64,
    ],
)
def test_weighted_median_integer_weights_equal_repeated_rows(dtype: torch.dtype) -> None:
    x = _x(7, 200, dtype, seed=3)
    counts = [1, 2, 3, 4, 5, 6, 7]
    repeated = torch.cat([x[i : i + 1].expand(c, -1) for i, c in enumerate(counts)])
    w = torch.tensor(counts, dtype=torch.float64)
    assert torch.equal(Median().weighted(x, w), Median()(repeated))


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_median_float_brute_force_without_ties(dtype: torch.dtype) -> None:
    """Random real weights (no exact ties): float32 inputs agree with brute force too."""
    x, w = _x(8, 100, dtype, seed=4), _random_weights(8, 5)
    expected = bf_weighted_median(x.double().numpy(), w.numpy())
    out = Median().weighted(x, w)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.double().numpy(), expected)


def test_weighted_median_zero_weight_rows_are_ignored() -> None:
    x = _x(6, 50)
    x[2] += 1e6  # an outlier with weight 0
    w = torch.tensor([1.0, 2.0, 0.0, 3.0, 1.0, 1.0])
    keep = [0, 1, 3, 4, 5]
    assert torch.equal(Median().weighted(x, w), Median().weighted(x[keep], w[keep]))


def test_weighted_median_large_input_is_chunked_consistently() -> None:
    """More columns than one chunk of the implementation (2^22 / n): same as brute force."""
    n, d = 3, (1 << 22) // 3 + 17
    x = _x(n, d, torch.float32, seed=6)
    w = torch.tensor([1.0, 1.5, 1.2], dtype=torch.float64)
    out = Median().weighted(x, w)
    # no row holds half of W = 3.7 and any two rows do: the middle value of every column
    assert torch.equal(out, Median()(x))


# --- GeometricMedian -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_geomed_minimises_the_weighted_objective(seed: int) -> None:
    x = _x(9, 6, seed=seed) * 3
    w = _random_weights(9, seed + 20) ** 3  # quite unequal
    z = GeometricMedian(eps=1e-12, max_iter=2000).weighted(x, w).numpy()
    xs, ws = x.numpy(), w.numpy()
    best = objective(z, xs, ws)
    rng = np.random.default_rng(seed)
    for scale in (1e-2, 1e-3):
        for _ in range(200):
            assert objective(z + scale * rng.normal(size=z.shape), xs, ws) >= best - 1e-12
    # and it is not the unweighted minimiser
    z0 = GeometricMedian(eps=1e-12, max_iter=2000)(x).numpy()
    assert objective(z0, xs, ws) > best + 1e-6


def test_weighted_geomed_default_parameters_are_near_optimal() -> None:
    x, w = _x(9, 6, seed=7) * 3, _random_weights(9, 8)
    z = GeometricMedian().weighted(x, w).numpy()
    best = objective(z, x.numpy(), w.numpy())
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert objective(z + 1e-2 * rng.normal(size=z.shape), x.numpy(), w.numpy()) >= best


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_geomed_integer_weights_equal_repeated_rows(dtype: torch.dtype) -> None:
    x = _x(5, 8, dtype, seed=9) * 2
    counts = [3, 1, 2, 1, 4]
    repeated = torch.cat([x[i : i + 1].expand(c, -1) for i, c in enumerate(counts)])
    rule = GeometricMedian(eps=1e-10, max_iter=1000)
    w = torch.tensor(counts, dtype=torch.float64)
    out = rule.weighted(x, w)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(out, rule(repeated), rtol=tol, atol=tol)


def test_weighted_geomed_a_majority_weight_wins() -> None:
    """A row holding at least half of the weight is the weighted geometric median."""
    x = _x(5, 4) * 10
    w = torch.tensor([1.0, 1.0, 1.0, 5.0, 1.0])
    z = GeometricMedian(eps=1e-12, max_iter=5000).weighted(x, w)
    torch.testing.assert_close(z, x[3], rtol=0, atol=1e-4)


def test_weighted_geomed_zero_weight_rows_are_ignored() -> None:
    x = _x(6, 5)
    x[4] += 1e3
    w = torch.tensor([1.0, 2.0, 1.0, 3.0, 0.0, 1.0])
    keep = [0, 1, 2, 3, 5]
    rule = GeometricMedian(eps=1e-12, max_iter=2000)
    torch.testing.assert_close(
        rule.weighted(x, w), rule.weighted(x[keep], w[keep]), rtol=1e-8, atol=1e-8
    )


# --- all three ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5, 6, 11])
def test_equal_weights_reproduce_the_unweighted_rules(dtype: torch.dtype, n: int) -> None:
    x = _x(n, 33, dtype, seed=n)
    for c in (1.0, 7.0):
        w = torch.full((n,), c)
        assert torch.equal(Median().weighted(x, w), Median()(x))  # exactly (docstring)
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(Mean().weighted(x, w), Mean()(x), rtol=tol, atol=tol)
        torch.testing.assert_close(
            GeometricMedian().weighted(x, w), GeometricMedian()(x), rtol=tol, atol=tol
        )


@pytest.mark.parametrize("name", list(RULES))
def test_weights_are_scale_invariant(name: str) -> None:
    rule = RULES[name]
    x, w = _x(7, 12, seed=11), _random_weights(7, 12)
    torch.testing.assert_close(
        rule.weighted(x, w), rule.weighted(x, 1000.0 * w), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize(
    "weights",
    [
        pytest.param([1.0, -1.0, 2.0, 1.0], id="negative"),
        pytest.param([1.0, float("nan"), 2.0, 1.0], id="nan"),
        pytest.param([1.0, float("inf"), 2.0, 1.0], id="inf"),
        pytest.param([1.0, 2.0, 1.0], id="too-short"),
        pytest.param([1.0, 2.0, 1.0, 1.0, 1.0], id="too-long"),
        pytest.param([0.0, 0.0, 0.0, 0.0], id="all-zero"),
        pytest.param([[1.0, 1.0, 1.0, 1.0]], id="2-d"),
    ],
)
def test_bad_weights_raise_value_error(name: str, weights: list) -> None:
    x = _x(4, 3)
    with pytest.raises(ValueError, match="weight"):
        RULES[name].weighted(x, torch.tensor(weights))  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(RULES))
def test_weighted_input_checks(name: str) -> None:
    rule = RULES[name]
    with pytest.raises(ValueError):
        rule.weighted(torch.ones(0, 3), torch.ones(0))  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        rule.weighted(torch.ones(3, 2, dtype=torch.int64), torch.ones(3))  # type: ignore[attr-defined]


def test_normalized_weights() -> None:
    x = _x(3, 2, torch.float32)
    a = normalized_weights(torch.tensor([1, 2, 5]), x)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, torch.tensor([0.125, 0.25, 0.625]))
    b = normalized_weights(np.array([0.0, 1.0, 1.0]), x.double())  # type: ignore[arg-type]
    assert b.dtype == torch.float64 and b.tolist() == [0.0, 0.5, 0.5]
