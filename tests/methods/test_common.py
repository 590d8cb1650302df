"""The methods' shared building blocks (``flwr_byz.methods.common``) against brute force:
``clip_rows`` (server clipping of Byz-VR-MARINA-PP / Eq. (10)), ``momentum_update`` and its
row-wise form (worker momentum), ``sgd_step``, ``guarded`` and ``shift_back_gradient``."""

from __future__ import annotations

import pytest
import torch

from flwr_byz.aggregators import Krum, Mean
from flwr_byz.methods.common import (
    clip_rows,
    guarded,
    momentum_rows,
    momentum_update,
    sgd_step,
    shift_back_gradient,
)
from tests.strategies.method_helpers import clip_reference


def rows_with_norms(norms: list[float], d: int = 7, seed: int = 0, dtype=torch.float32):
    """Random directions scaled to the given norms (0 gives a zero row)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(norms), d, generator=gen, dtype=torch.float64)
    x = (
        x
        / torch.linalg.norm(x, dim=1, keepdim=True)
        * torch.tensor(norms, dtype=torch.float64)[:, None]
    )
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("level", [0.3, 1.0, 4.0])
def test_clip_rows_matches_brute_force(dtype, level):
    norms = [0.0, 0.05, 0.29, 0.9, 1.1, 3.9, 4.2, 50.0, 1e4]
    x = rows_with_norms(norms, dtype=dtype)
    before = x.clone()
    out, count = clip_rows(x, level)
    want, want_count = clip_reference(x.double(), level)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(x, before)  # the input is not modified
    assert count == want_count == sum(n > level for n in norms)
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=0)
    out_norms = torch.linalg.norm(out.double(), dim=1)
    for i, n in enumerate(norms):
        if n <= level:  # untouched, bit for bit (zero rows included)
            assert torch.equal(out[i], x[i])
        else:  # shortened to exactly the level, same direction
            assert float(out_norms[i]) == pytest.approx(level, rel=1e-6)
            cos = float(out[i].double() @ x[i].double()) / (float(out_norms[i]) * n)
            assert cos == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_clip_rows_random_matrices(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(11, 13, generator=gen) * torch.rand(11, 1, generator=gen) * 6
    norms = torch.linalg.norm(x.double(), dim=1).sort().values
    level = float(norms[5] + norms[6]) / 2  # no row sits on the level
    out, count = clip_rows(x, level)
    want, want_count = clip_reference(x, level)
    assert count == want_count and 0 < count < 11
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-7)


def test_clip_rows_level_none_leaves_rows_as_they_are():
    x = rows_with_norms([0.0, 1.0, 1e6])
    out, count = clip_rows(x, None)
    assert count == 0 and torch.equal(out, x)


def test_clip_rows_zero_rows_stay_zero():
    x = torch.zeros(3, 4)
    out, count = clip_rows(x, 1.0)
    assert count == 0 and torch.equal(out, x) and bool(torch.isfinite(out).all())


def test_clip_rows_empty_input():
    out, count = clip_rows(torch.empty(0, 5), 1.0)
    assert out.shape == (0, 5) and count == 0


def test_clip_rows_level_zero_sends_nonzero_rows_to_zero():
    x = rows_with_norms([0.5, 2.0])
    out, count = clip_rows(x, 0.0)
    assert count == 2 and torch.equal(out, torch.zeros_like(x))


def test_clip_rows_level_zero_does_not_count_zero_rows():
    x = torch.cat([torch.zeros(1, 4), rows_with_norms([2.0], d=4)])
    _, count = clip_rows(x, 0.0)
    assert count == clip_reference(x, 0.0)[1] == 1


def test_clip_rows_huge_finite_float32_row_is_clipped_to_the_level():
    x = torch.tensor([[1e30, -1e30, 1e30, 0.0]], dtype=torch.float32)
    out, count = clip_rows(x, 2.0)
    assert count == 1
    assert float(torch.linalg.norm(out.double())) == pytest.approx(2.0, rel=1e-6)


# --- momentum_update, sgd_step ---------------------------------------------------------------


def test_momentum_first_step_is_a_copy_of_the_gradient():
    grad = torch.randn(6, generator=torch.Generator().manual_seed(1))
    m = momentum_update(None, grad, 0.9)
    assert torch.equal(m, grad)
    m.add_(1.0)  # not an alias of the gradient
    assert not torch.equal(m, grad)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_momentum_is_an_exponential_average(beta):
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(4)]
    m = None
    for grad in grads:
        m = momentum_update(m, grad, beta)
    # m_4 = beta^3 g_1 + sum_{j=2..4} beta^(4-j) (1 - beta) g_j   (m_1 = g_1)
    want = beta**3 * grads[0] + sum(beta ** (3 - j) * (1 - beta) * grads[j] for j in range(1, 4))
    torch.testing.assert_close(m, want, rtol=1e-12, atol=1e-12)


def test_sgd_step():
    x = torch.tensor([1.0, -2.0, 0.5])
    g = torch.tensor([0.5, 0.25, -1.0], dtype=torch.float64)
    out = sgd_step(x, g, 0.2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([0.9, -2.05, 0.7]))
    assert torch.equal(x, torch.tensor([1.0, -2.0, 0.5]))


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_momentum_rows_equal_momentum_update_per_row(beta: float) -> None:
    gen = torch.Generator().manual_seed(3)
    m, g = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    started = torch.tensor([True, False, False, True])
    out = momentum_rows(m, g, started, beta)
    for i in range(4):
        assert torch.equal(out[i], momentum_update(m[i] if started[i] else None, g[i], beta))
    none = momentum_rows(m, g, torch.zeros(4, dtype=torch.bool), beta)
    assert torch.equal(none, g) and none.data_ptr() != g.data_ptr()


def test_guarded_returns_none_where_the_rule_cannot_run() -> None:
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(guarded(Mean())(x), Mean()(x))
    assert guarded(Mean())(x[:0]) is None  # no row
    assert guarded(Krum(f=2))(x) is None  # Krum needs n > 2f + 2
    assert guarded(lambda rows: rows.sum(dim=0) * float("inf"))(x) is None  # non-finite


def test_shift_back_gradient_lands_on_the_target() -> None:
    x, x0 = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    for mult, want in ((None, x0), (0.5, x - 0.5 * (x - x0))):
        g = shift_back_gradient(x, x0, 0.25, mult)
        torch.testing.assert_close(sgd_step(x, g, 0.25), want)
