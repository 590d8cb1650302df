"""The fast kernels give bit for bit what the plain ones they replace give, on inputs full of
exact ties: the row-wise k-smallest selection (NNM's neighbours) against a stable sort, NNM
against its sort-based definition, Krum's k smallest distances against ``topk``."""

from __future__ import annotations

import pytest
import torch

from flwr_byz.aggregators import NNM, Bulyan
from flwr_byz.aggregators.base import (
    gram,
    pairwise_sq_distances,
    smallest_in_rows,
    smallest_sorted,
)


def by_sort(s: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` entries of each row's stable ascending sort, as a mask."""
    order = torch.sort(s, dim=1, stable=True).indices[:, : max(k, 0)]
    return torch.zeros(s.shape, dtype=torch.bool).scatter_(1, order, True)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    ("dtype", "device"),
    [
        (torch.float32, "cpu"),  # np.partition
        (torch.float64, "cpu"),
        (torch.float16, "cpu"),  # torch.kthvalue, as on CUDA
        pytest.param(torch.float32, "cuda", marks=CUDA),
    ],
)
@pytest.mark.parametrize("levels", [2, 5, 1000])
def test_smallest_in_rows_is_the_stable_sort_prefix(
    dtype: torch.dtype, device: str, levels: int
) -> None:
    g = torch.Generator().manual_seed(levels)
    for n, m in [(1, 1), (3, 7), (40, 33), (1, 81), (12, 100), (90, 130)]:  # sort; selection
        s = torch.randint(0, levels, (n, m), generator=g).to(dtype)  # many exact ties
        s[s == 1] = -0.0  # -0.0 and 0.0 tie too
        for k in range(0, m + 2):
            got = smallest_in_rows(s.to(device), k).cpu()
            assert torch.equal(got, by_sort(s, k)), (n, m, k)


@pytest.mark.parametrize("m", [4, 100])
def test_smallest_in_rows_nan_and_inf_rows(m: int) -> None:
    rows = [
        [float("nan"), 1.0, 0.0, float("nan")],
        [float("inf"), float("inf"), 1.0, float("-inf")],
        [2.0, float("nan"), 2.0, 2.0],
        [float("nan")] * 4,
    ]
    s = torch.tensor([(r * m)[:m] for r in rows])
    for k in range(m + 1):
        assert torch.equal(smallest_in_rows(s, k), by_sort(s, k)), k


def old_nnm_pre(x: torch.Tensor, f: int) -> torch.Tensor:
    """NNM's mixing as first written: a stable sort of the distances, a scatter, one GEMM."""
    n = x.shape[0]
    k = n - f
    order = torch.sort(pairwise_sq_distances(x), dim=1, stable=True).indices[:, :k]
    w = torch.zeros(n, n, dtype=x.dtype)
    w.scatter_(1, order, 1.0 / k)
    return w @ x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "f", "d"), [(5, 1, 3), (12, 3, 50), (60, 6, 200), (200, 20, 17)])
def test_nnm_equals_the_sort_based_mixing(dtype: torch.dtype, n: int, f: int, d: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    x[1] = x[0]  # distance ties
    x[n // 2 :: 3] = x[n // 2].clone()
    assert torch.equal(NNM(f).pre(x), old_nnm_pre(x, f))
    q = torch.randint(-2, 3, (n, d), generator=g).to(dtype)  # lattice: ties everywhere
    assert torch.equal(NNM(f).pre(q), old_nnm_pre(q, f))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_smallest_sorted_is_topk_bit_for_bit(dtype: torch.dtype) -> None:
    """Ties, 0.0 / -0.0, inf (Krum's masked diagonal); negative entries and NaN take the
    plain path. Compared as bits, so the zeros' signs count too."""
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    g = torch.Generator().manual_seed(7)
    for levels in (1, 4, 1000):
        for n, m in [(1, 1), (5, 5), (30, 30), (200, 150)]:
            s = torch.randint(0, levels + 1, (n, m), generator=g).to(dtype)
            s[s == 1] = -0.0
            s.view(-1)[:: m + 1] = float("inf")
            variants = [s, s - 0.5, torch.where(s == 2, float("nan"), s)]
            for v in variants:
                for k in sorted({0, 1, m // 2, m - 1, m}):
                    want = v.topk(k, dim=1, largest=False).values
                    assert torch.equal(smallest_sorted(v, k).view(bits), want.view(bits))


def test_gram_overflow_fallback_leaves_the_input_alone() -> None:
    """The float64 rescaled Gram product once divided a float64 input in place."""
    x = torch.randn(5, 40, dtype=torch.float64) * 1e300
    before = x.clone()
    gram(x)
    assert torch.equal(x, before)
    assert Bulyan(0).select(x).tolist() == Bulyan(0).select(x).tolist()
