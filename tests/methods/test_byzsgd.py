"""ByzSGD's numeric rules (``flwr_byz.methods.byzsgd``) against brute-force
references written from the algorithm text (El-Mhamdi et al. PODC 2020; the constants of the
authors' code): the resilience conditions n_ps >= 3 f_ps + 2 and n_w >= 3 f_w + 1, the gather
period T = max(1, floor(1 / (3 l lr))), the diameter max_{i,j} ||x_i - x_j|| (itertools over
the pairs), the empirical Lipschitz coefficient, the Lipschitz filter (k within the
(n_ps - f_ps)/n_ps quantile of the history and k, ``np.percentile`` with linear
interpolation) and the Outliers bound lr ||g|| ((3T + 2)(n_w - f_w) / (4 f_w) + 2 s).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from flwr_byz.methods.byzsgd import (
    check_quorums,
    diameter,
    gather_period,
    lipschitz_accepts,
    lipschitz_coefficient,
    outlier_bound,
)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- check_quorums ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_servers", "f_servers"), [(1, 0), (2, 0), (5, 1), (6, 1), (8, 2), (11, 3), (100, 32)]
)
def test_server_quorums_that_hold(n_servers: int, f_servers: int) -> None:
    assert n_servers >= 3 * f_servers + 2 or f_servers == 0
    check_quorums(n_servers, f_servers)


@pytest.mark.parametrize(("n_servers", "f_servers"), [(4, 1), (1, 1), (7, 2), (10, 3)])
def test_server_quorums_that_fail(n_servers: int, f_servers: int) -> None:
    need = 3 * f_servers + 2
    with pytest.raises(ValueError, match=rf"n_servers >= 3 f_servers \+ 2 = {need}\b") as err:
        check_quorums(n_servers, f_servers)
    assert f"n_servers={n_servers}" in str(err.value)


def test_server_quorum_message_for_one_byzantine_server() -> None:
    with pytest.raises(ValueError, match=r"n_servers >= 3 f_servers \+ 2 = 5"):
        check_quorums(4, 1)


@pytest.mark.parametrize(("n_servers", "f_servers"), [(0, 0), (-1, 0), (3, -1)])
def test_server_counts_out_of_range(n_servers: int, f_servers: int) -> None:
    with pytest.raises(ValueError, match="n_servers >= 1 and f_servers >= 0"):
        check_quorums(n_servers, f_servers)


@pytest.mark.parametrize("f_workers", range(5))
def test_worker_quorums_against_the_condition(f_workers: int) -> None:
    need = 3 * f_workers + 1
    for n_workers in range(max(need - 3, 0), need + 3):
        if n_workers >= need:
            check_quorums(5, 1, n_workers, f_workers)
        else:
            with pytest.raises(
                ValueError, match=rf"n_workers >= 3 f_workers \+ 1 = {need} workers"
            ):
                check_quorums(5, 1, n_workers, f_workers)


def test_worker_quorum_message_for_two_byzantine_workers() -> None:
    with pytest.raises(ValueError, match=r"n_workers >= 3 f_workers \+ 1 = 7") as err:
        check_quorums(5, 1, 6, 2)
    assert "got 6" in str(err.value)
    check_quorums(5, 1, 7, 2)


def test_worker_quorum_is_checked_only_when_both_counts_are_given() -> None:
    check_quorums(5, 1, 1, None)
    check_quorums(5, 1, None, 9)
    with pytest.raises(ValueError, match="n_servers"):  # the servers are checked first
        check_quorums(4, 1, 1, 1)


# --- gather_period ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lipschitz", "lr"),
    [(1.0, 0.05), (1.0, 0.01), (2.0, 0.01), (0.5, 0.1), (1.0, 0.3), (1.0, 1.0), (10.0, 0.5)],
)
def test_gather_period_is_the_floor_of_one_over_three_l_lr(lipschitz: float, lr: float) -> None:
    exact = Fraction(1) / (3 * Fraction(lipschitz) * Fraction(lr))  # the floats, exactly
    want = max(1, math.floor(exact))
    assert gather_period(lipschitz, lr) == want


def test_gather_period_known_values() -> None:
    assert gather_period(1.0, 0.05) == 6  # 1 / 0.15 = 6.67
    assert gather_period(1.0, 0.01) == 33
    assert gather_period(1.0, 1.0) == 1  # floor(1/3) = 0 -> at least 1


@pytest.mark.parametrize(("lipschitz", "lr"), [(0.0, 0.1), (1.0, 0.0), (-1.0, 0.1), (1.0, -1.0)])
def test_gather_period_needs_positive_arguments(lipschitz: float, lr: float) -> None:
    with pytest.raises(ValueError, match="lipschitz > 0 and lr > 0"):
        gather_period(lipschitz, lr)


def test_gather_period_rejects_nan() -> None:
    with pytest.raises(ValueError):
        gather_period(float("nan"), 0.1)


# --- diameter --------------------------------------------------------------------------------


def diameter_by_hand(models: torch.Tensor) -> float:
    rows = [[float(v) for v in row] for row in models]
    best = 0.0
    for a, b in itertools.combinations(rows, 2):
        best = max(best, math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b, strict=True))))
    return best


@pytest.mark.parametrize(("m", "d", "seed"), [(2, 1, 0), (3, 7, 1), (5, 40, 2), (12, 3, 3)])
def test_diameter_is_the_largest_pairwise_distance(m: int, d: int, seed: int) -> None:
    x = torch.randn(m, d, generator=gen(seed), dtype=F64) * torch.rand(m, 1, generator=gen(seed))
    assert diameter(x) == pytest.approx(diameter_by_hand(x), rel=1e-12)


def test_diameter_of_float32_models() -> None:
    x = torch.randn(6, 9, generator=gen(4)).float()
    assert diameter(x) == pytest.approx(diameter_by_hand(x), rel=1e-12)


def test_diameter_known_value_and_edge_cases() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]], dtype=F64)
    assert diameter(x) == 5.0
    assert diameter(x[:1]) == 0.0  # one row
    assert diameter(torch.zeros(0, 3, dtype=F64)) == 0.0  # no rows
    assert diameter(torch.ones(4, 3, dtype=F64)) == 0.0  # all equal


@pytest.mark.parametrize("m", [10, 25])
def test_diameter_of_nearly_equal_models(m: int) -> None:
    """Honest servers' models are close to each other: the distances are tiny next to the
    models' norms."""
    base = torch.randn(1, 100, generator=gen(5), dtype=F64) * 10
    x = base + 1e-8 * torch.randn(m, 100, generator=gen(6), dtype=F64)
    assert diameter(x) == pytest.approx(diameter_by_hand(x), rel=1e-6)


@pytest.mark.parametrize("m", [26, 40])
def test_diameter_of_many_nearly_equal_models(m: int) -> None:
    """torch.cdist's default matrix-product form (above 25 rows) cancels catastrophically for
    nearly equal models; diameter() must not use it."""
    base = torch.randn(1, 100, generator=gen(5), dtype=F64) * 10
    x = base + 1e-8 * torch.randn(m, 100, generator=gen(6), dtype=F64)
    assert diameter(x) == pytest.approx(diameter_by_hand(x), rel=1e-6)


def test_diameter_of_many_spread_models() -> None:
    x = torch.randn(30, 20, generator=gen(7), dtype=F64)
    assert diameter(x) == pytest.approx(diameter_by_hand(x), rel=1e-9)


# --- lipschitz_coefficient -------------------------------------------------------------------


def norm_by_hand(v: torch.Tensor) -> float:
    return math.sqrt(sum(float(a) ** 2 for a in v))


@pytest.mark.parametrize("seed", range(5))
def test_lipschitz_coefficient_is_the_ratio_of_the_changes(seed: int) -> None:
    g, gp, x, xp = (torch.randn(11, generator=gen(10 * seed + i), dtype=F64) for i in range(4))
    want = norm_by_hand(g - gp) / norm_by_hand(x - xp)
    assert lipschitz_coefficient(g, gp, x, xp) == pytest.approx(want, rel=1e-12)


def test_lipschitz_coefficient_of_a_linear_map_is_its_gain() -> None:
    x, xp = torch.tensor([1.0, 2.0, 3.0], dtype=F64), torch.tensor([1.0, 5.0, -1.0], dtype=F64)
    assert lipschitz_coefficient(4 * x, 4 * xp, x, xp) == pytest.approx(4.0, rel=1e-15)


def test_lipschitz_coefficient_is_zero_when_the_model_did_not_move() -> None:
    x = torch.randn(5, generator=gen(1), dtype=F64)
    g, gp = torch.randn(5, generator=gen(2), dtype=F64), torch.randn(5, generator=gen(3), dtype=F64)
    assert lipschitz_coefficient(g, gp, x, x.clone()) == 0.0


# --- lipschitz_accepts -----------------------------------------------------------------------


def accepts_by_hand(k: float, history: list[float], n: int, f: int) -> bool:
    if not math.isfinite(k):
        return False
    if not history:
        return True
    return k <= float(np.percentile(np.array([*history, k]), 100 * (n - f) / n))


@pytest.mark.parametrize(("n", "f"), [(5, 1), (8, 2), (11, 3), (2, 0), (3, 1)])
def test_lipschitz_filter_against_numpy_percentile(n: int, f: int) -> None:
    seen = {True: 0, False: 0}
    for trial in range(150):
        size = 1 + trial % 12
        history = (torch.rand(size, generator=gen(trial), dtype=F64) * 3).tolist()
        k = float(torch.rand(1, generator=gen(1000 + trial), dtype=F64)) * 3.5
        q = float(np.percentile(np.array([*history, k]), 100 * (n - f) / n))
        if abs(k - q) < 1e-9:  # a tie up to rounding: either answer is right
            continue
        want = accepts_by_hand(k, history, n, f)
        assert lipschitz_accepts(k, torch.tensor(history, dtype=F64), n, f) == want
        seen[want] += 1
    assert min(seen.values()) > 10 or (f == 0 and seen[False] == 0)


def test_lipschitz_filter_known_values() -> None:
    history = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    # quantile 0.8 of [1, 2, 3, 4, k] (linear): position 3.2 in the sorted five values
    assert lipschitz_accepts(4.0, history, 5, 1)  # [1,2,3,4,4]: 4
    assert not lipschitz_accepts(4.1, history, 5, 1)  # [1,2,3,4,4.1]: 4.02
    assert lipschitz_accepts(3.5, history, 5, 1)  # [1,2,3,3.5,4]: 3.6
    assert lipschitz_accepts(0.0, history, 5, 1)
    # the newest coefficient is rejected whenever it is the strict maximum (q < 1) ...
    assert not lipschitz_accepts(1.0 + 1e-9, torch.ones(3, dtype=F64), 5, 1)
    # ... and accepted with f_ps = 0 (q = 1: the maximum itself)
    assert lipschitz_accepts(1e6, history, 5, 0)
    # ties with the history accept
    assert lipschitz_accepts(2.0, torch.full((6,), 2.0, dtype=F64), 5, 1)


def test_lipschitz_filter_with_an_empty_history_accepts_any_finite_k() -> None:
    empty = torch.zeros(0, dtype=F64)
    for k in (0.0, 1.0, 1e30):
        assert lipschitz_accepts(k, empty, 5, 1)


@pytest.mark.parametrize("k", [math.inf, -math.inf, math.nan])
def test_lipschitz_filter_rejects_non_finite_k(k: float) -> None:
    assert not lipschitz_accepts(k, torch.zeros(0, dtype=F64), 5, 1)
    assert not lipschitz_accepts(k, torch.tensor([1.0, 2.0], dtype=F64), 5, 0)


def test_lipschitz_filter_takes_any_history_shape_and_dtype() -> None:
    history = [0.5, 1.5, 2.5, 3.5]
    for h in (
        torch.tensor(history, dtype=torch.float32),
        torch.tensor(history, dtype=F64).reshape(2, 2),
    ):
        assert lipschitz_accepts(3.0, h, 5, 1) == accepts_by_hand(3.0, history, 5, 1)
        assert lipschitz_accepts(3.6, h, 5, 1) == accepts_by_hand(3.6, history, 5, 1)
    assert lipschitz_accepts(3.0, torch.tensor(history), 5, 1)
    assert not lipschitz_accepts(3.6, torch.tensor(history), 5, 1)


# --- outlier_bound ---------------------------------------------------------------------------


@pytest.mark.parametrize("period", [1, 3, 6, 33])
@pytest.mark.parametrize(("n_workers", "f_workers"), [(4, 1), (7, 2), (13, 4), (20, 1)])
def test_outlier_bound_formula(period: int, n_workers: int, f_workers: int) -> None:
    lr, grad_norm = 0.05, 2.7
    for s in range(period):
        spread = Fraction(3 * period + 2) * (n_workers - f_workers) / (4 * f_workers)
        want = float(Fraction(lr) * Fraction(grad_norm) * (spread + 2 * s))
        got = outlier_bound(lr, grad_norm, period, n_workers, f_workers, s)
        assert got == pytest.approx(want, rel=1e-14)


def test_outlier_bound_known_value() -> None:
    # T = 3, n_w = 7, f_w = 2, s = 2: 0.1 * 2 * (11 * 5 / 8 + 4) = 2.175
    assert outlier_bound(0.1, 2.0, 3, 7, 2, 2) == pytest.approx(2.175, rel=1e-14)
    assert outlier_bound(0.1, 0.0, 3, 7, 2, 2) == 0.0  # a zero gradient: no slack


def test_outlier_bound_is_infinite_without_byzantine_workers() -> None:
    assert outlier_bound(0.1, 2.0, 3, 7, 0, 1) == math.inf
    assert outlier_bound(0.1, 0.0, 1, 1, 0, 0) == math.inf
