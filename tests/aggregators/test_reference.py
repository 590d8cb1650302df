"""Every aggregator equals its brute-force reference (``reference.py``) on random float64 data.

The references are written from docs/ALGORITHMS.md, Aggregators with explicit loops; the
implementation uses Gram products and vectorised sorts, so agreement to ~1e-9 relative is a
real cross-check of both. Cases span d in {1, 7, 33} and n from each rule's minimum to ~15
(subset rules: n <= 12 so the exhaustive references stay fast).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import pytest
import reference as ref
import torch

from flwr_byz.aggregators import (
    ARC,
    CAF,
    CTMA,
    MDA,
    NNM,
    SMEA,
    Bucketing,
    Bulyan,
    CenteredClipping,
    Clipping,
    GeometricMedian,
    Krum,
    Meamed,
    Mean,
    Median,
    MoNNA,
    MultiKrum,
    TrimmedMean,
    get_aggregator,
)

RTOL = 1e-9
DS = (1, 7, 33)


def make_x(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random rows around a random centre with uneven per-row scales (no exact ties)."""
    g = torch.Generator().manual_seed(seed)
    centre = 3.0 * torch.randn(d, generator=g, dtype=torch.float64)
    scales = 0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64)
    x = centre + scales * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x.to(dtype)


def seed_of(*args: int) -> int:
    return hash(args) % (2**31)


def assert_matches(out: torch.Tensor, expected: np.ndarray, x: torch.Tensor, rtol=RTOL) -> None:
    assert isinstance(out, torch.Tensor)
    assert out.shape == (x.shape[1],)
    assert out.dtype == x.dtype
    scale = max(1.0, float(x.abs().max()))
    np.testing.assert_allclose(out.numpy(), expected, rtol=rtol, atol=rtol * scale)


def cases(
    min_n: Callable[[int], int], fs: tuple[int, ...], n_max: int = 15, ds: tuple[int, ...] = DS
) -> Iterator[tuple[int, int, int]]:
    """(n, f, d): for each f the rule's minimum n, one above it, and n_max."""
    for f in fs:
        lo = min_n(f)
        for n in sorted({lo, lo + 1, (lo + n_max) // 2, n_max}):
            if lo <= n <= n_max:
                for d in ds:
                    yield n, f, d


def ids(case: tuple[int, ...]) -> str:
    return "-".join(f"{k}{v}" for k, v in zip("nfd", case, strict=True))


def params(*args, **kwargs):  # type: ignore[no-untyped-def]
    c = list(cases(*args, **kwargs))
    return pytest.mark.parametrize("n,f,d", c, ids=[ids(t) for t in c])


# ----------------------------------------------------------------------------- coordinate-wise


@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", [1, 2, 3, 8, 15])
def test_mean(n: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, d))
    assert_matches(Mean()(x), ref.mean(x), x)


@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 14, 15])  # odd and even n
def test_median(n: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, d, 1))
    out = Median()(x)
    assert_matches(out, ref.median(x), x)
    np.testing.assert_allclose(out.numpy(), np.median(x.numpy(), axis=0), rtol=1e-12)


@params(lambda f: 2 * f + 1, (0, 1, 2, 4, 7))
def test_trimmed_mean(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 2))
    assert_matches(TrimmedMean(f)(x), ref.trimmed_mean(x, f), x)


@params(lambda f: f + 1, (0, 1, 2, 5, 9))
def test_meamed(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 3))
    assert_matches(Meamed(f)(x), ref.meamed(x, f), x)


# ----------------------------------------------------------------------------- geometric median


@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", [1, 2, 3, 6, 11, 15])
def test_geometric_median_default_stopping(n: int, d: int) -> None:
    """Same stopping rule on both sides; the implementation runs Weiszfeld in Gram form, so
    only the rounding differs (a looser tolerance covers a possible off-by-one stop)."""
    x = make_x(n, d, seed_of(n, d, 4))
    assert_matches(GeometricMedian()(x), ref.geometric_median(x), x, rtol=1e-7)


@pytest.mark.parametrize("max_iter", [0, 1, 3, 25])
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", [2, 5, 14])
def test_geometric_median_fixed_iterations(n: int, d: int, max_iter: int) -> None:
    """eps = 0: exactly max_iter Weiszfeld updates on both sides (max_iter = 0: the mean)."""
    x = make_x(n, d, seed_of(n, d, max_iter, 5))
    agg = GeometricMedian(eps=0.0, max_iter=max_iter)
    assert_matches(agg(x), ref.geometric_median(x, eps=0.0, max_iter=max_iter), x)


@pytest.mark.parametrize("nu", [0.1, 1.0, 5.0])
def test_geometric_median_smoothing(nu: float) -> None:
    """A large nu actually caps weights (distances of order 1-5 fall under it)."""
    x = make_x(9, 4, seed_of(9, 4, 6))
    agg = GeometricMedian(nu=nu, eps=0.0, max_iter=7)
    assert_matches(agg(x), ref.geometric_median(x, nu=nu, eps=0.0, max_iter=7), x)


def test_geometric_median_converges_to_minimiser() -> None:
    """With a tight eps the output is (near) the argmin of sum ||z - x_i||."""
    x = make_x(11, 5, 7)
    z = GeometricMedian(eps=1e-14, max_iter=5000)(x)
    r = ref.geometric_median(x, eps=0.0, max_iter=5000)
    np.testing.assert_allclose(z.numpy(), r, atol=1e-7)
    obj = float(torch.linalg.vector_norm(x - z, dim=1).sum())
    for t in 1e-4 * torch.randn(20, 5, generator=torch.Generator().manual_seed(0), dtype=x.dtype):
        assert obj <= float(torch.linalg.vector_norm(x - (z + t), dim=1).sum()) + 1e-12


# ----------------------------------------------------------------------------- Krum family


@params(lambda f: 2 * f + 3, (0, 1, 2, 4, 6))
def test_krum(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 8))
    agg = Krum(f)
    assert agg.select(x) == ref.krum_index(x, f)
    assert_matches(agg(x), ref.krum(x, f), x)


@params(lambda f: 2 * f + 3, (0, 1, 2, 4, 6))
def test_multikrum_default_m(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 9))
    assert_matches(MultiKrum(f)(x), ref.multikrum(x, f), x)


@pytest.mark.parametrize("m", [1, 2, 5, 100])
@params(lambda f: 2 * f + 3, (1, 3), ds=(1, 33))
def test_multikrum_explicit_m(n: int, f: int, d: int, m: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, m, 10))
    assert_matches(MultiKrum(f, m=m)(x), ref.multikrum(x, f, m), x)


def test_multikrum_m1_is_krum() -> None:
    x = make_x(9, 6, 11)
    assert torch.equal(MultiKrum(2, m=1)(x), Krum(2)(x))


@params(lambda f: 4 * f + 3, (1, 2, 3))  # f = 0: test_bulyan_f0_selects_every_input_once
def test_bulyan(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 12))
    assert Bulyan(f).select(x).tolist() == ref.bulyan_selection(x, f)
    assert_matches(Bulyan(f)(x), ref.bulyan(x, f), x)


@pytest.mark.parametrize("n", [3, 9])
def test_bulyan_f0_selects_every_input_once(n: int) -> None:
    """f = 0: theta = n, so the selection is a permutation of all inputs and beta = n, i.e.
    the output is the mean. (The last Krum run sees a single remaining input.)"""
    x = make_x(n, 3, seed_of(n, 35))
    assert Bulyan(0).select(x).tolist() == ref.bulyan_selection(x, 0)
    assert sorted(ref.bulyan_selection(x, 0)) == list(range(n))
    assert_matches(Bulyan(0)(x), ref.mean(x), x)
    assert_matches(Bulyan(0)(x), ref.bulyan(x, 0), x)


def test_krum_family_ties_by_index() -> None:
    """Points 0..4 on a line, f = 1: Krum scores [5, 2, 2, 2, 5] (exact in floating point)."""
    x = torch.arange(5, dtype=torch.float64)[:, None]
    assert Krum(1).select(x) == 1 == ref.krum_index(x, 1)
    # MultiKrum m = 4: stable order 1, 2, 3, 0 -> mean 1.5
    assert float(MultiKrum(1)(x)) == 1.5 == float(ref.multikrum(x, 1)[0])


# ----------------------------------------------------------------------------- centered clipping


@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("tau", [0.3, 2.0, 1e3])
@pytest.mark.parametrize("d", DS)
def test_centered_clipping_sequence(d: int, tau: float, iters: int) -> None:
    """First call starts at zero, the second at the first output, reset() restarts at zero."""
    agg, want = CenteredClipping(tau=tau, iters=iters), ref.CenteredClipping(tau, iters)
    x1, x2 = make_x(7, d, seed_of(d, 13)), make_x(7, d, seed_of(d, 14))
    for x in (x1, x2, x1):
        assert_matches(agg(x), want(x), x)
    agg.reset()
    want.reset()
    first = ref.CenteredClipping(tau, iters)(x2)
    out = agg(x2)
    assert_matches(out, want(x2), x2)
    assert_matches(out, first, x2)


def test_centered_clipping_large_tau_is_mean_after_one_step() -> None:
    x = make_x(6, 3, 15)
    assert_matches(CenteredClipping(tau=1e9)(x), ref.mean(x), x)


# ----------------------------------------------------------------------------- subset rules


@params(lambda f: 2 * f + 1, (0, 1, 2, 3, 5), n_max=12)
def test_mda(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 16))
    assert MDA(f).select(x).tolist() == list(ref.mda_subset(x, f))
    assert_matches(MDA(f)(x), ref.mda(x, f), x)


def test_mda_ties_lexicographic() -> None:
    """0..4 on a line, f = 1: {0,1,2,3} and {1,2,3,4} both have diameter 3 -> the first."""
    x = torch.arange(5, dtype=torch.float64)[:, None] * torch.ones(1, 3, dtype=torch.float64)
    assert MDA(1).select(x).tolist() == [0, 1, 2, 3] == list(ref.mda_subset(x, 1))
    assert MDA(1)(x).tolist() == [1.5, 1.5, 1.5]


@params(lambda f: f + 1, (0, 1, 2, 3, 4), n_max=10)
def test_smea(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 17))
    assert SMEA(f).select(x).tolist() == list(ref.smea_subset(x, f))
    assert_matches(SMEA(f)(x), ref.smea(x, f), x)


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_smea_chunking_does_not_change_result(chunk: int) -> None:
    x = make_x(9, 4, 18)
    assert_matches(SMEA(3, chunk=chunk)(x), ref.smea(x, 3), x)


@params(lambda f: 2 * f + 1, (0, 1, 2, 3), n_max=12)
def test_caf(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 19))
    assert_matches(CAF(f)(x), ref.caf(x, f), x, rtol=1e-8)


# ----------------------------------------------------------------------------- nearest neighbours


@params(lambda f: f + 1, (0, 1, 3, 6))
def test_nnm_pre(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 20))
    y = NNM(f).pre(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_allclose(y.numpy(), ref.nnm_pre(x, f), rtol=RTOL, atol=RTOL * 10)


@params(lambda f: f + 1, (0, 1, 3, 6))
def test_nnm_mean(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 21))
    assert_matches(NNM(f, Mean())(x), ref.nnm(x, f, ref.mean), x)


@params(lambda f: 2 * f + 3, (0, 1, 2, 4))
def test_nnm_krum(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 22))
    assert_matches(NNM(f, Krum(f))(x), ref.nnm(x, f, ref.krum), x)


def test_nnm_duplicate_ties_by_index() -> None:
    """Rows 0 and 1 coincide: for x_1 the nearest are x_0 then x_1 (distance 0, by index)."""
    x = torch.tensor([[0.0], [0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    y = NNM(3).pre(x)
    assert y[:, 0].tolist() == ref.nnm_pre(x, 3)[:, 0].tolist() == [0.0, 0.0, 0.5, 2.0, 5.0]


@pytest.mark.parametrize("which", ["first", "last", "middle", "negative"])
@params(lambda f: f + 1, (0, 1, 3, 6))
def test_monna(n: int, f: int, d: int, which: str) -> None:
    x = make_x(n, d, seed_of(n, f, d, 23))
    idx = {"first": 0, "last": n - 1, "middle": n // 2, "negative": -1}[which]
    assert_matches(MoNNA(f, idx=idx)(x), ref.monna(x, f, idx), x)


# ----------------------------------------------------------------------------- pre-aggregators


BUCKET_BASES = {
    "mean": (lambda f: Mean(), ref.mean),
    "median": (lambda f: Median(f), ref.median),
    "trimmedmean": (lambda f: TrimmedMean(f), ref.trimmed_mean),
    "krum": (lambda f: Krum(f), ref.krum),
}


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize(
    "base,n,s,f",
    [
        ("mean", 10, 2, 0),
        ("mean", 11, 3, 0),
        ("median", 9, 2, 2),
        ("median", 15, 4, 1),
        ("median", 5, 1, 2),
        ("trimmedmean", 15, 2, 2),
        ("trimmedmean", 13, 3, 1),
        ("krum", 15, 2, 2),
        ("krum", 14, 2, 1),
    ],
)
@pytest.mark.parametrize("d", DS)
def test_bucketing(base: str, n: int, s: int, f: int, seed: int, d: int) -> None:
    """Three calls (the permutation advances), then reset() restarts the stream."""
    make, base_ref = BUCKET_BASES[base]
    agg = Bucketing(s=s, base=make(f), seed=seed, f=f)
    want = ref.Bucketing(s, base_ref, f, seed)
    xs = [make_x(n, d, seed_of(n, s, f, d, k, 24)) for k in range(3)]
    for x in xs:
        assert_matches(agg(x), want(x), x)
    agg.reset()
    want.reset()
    assert_matches(agg(xs[1]), want(xs[1]), xs[1])


@pytest.mark.parametrize("n,s", [(10, 2), (11, 3), (7, 7), (5, 1), (9, 20)])
def test_bucketing_pre_is_bucket_means(n: int, s: int) -> None:
    x = make_x(n, 5, seed_of(n, s, 25))
    agg, want = Bucketing(s=s, seed=3), ref.Bucketing(s, ref.median, 0, 3)
    for _ in range(2):
        means = agg.pre(x)
        assert means.shape == (math.ceil(n / s), 5)
        np.testing.assert_allclose(means.numpy(), want.pre(x), rtol=RTOL, atol=RTOL * 10)


def test_bucketing_default_seed_permutation() -> None:
    """The documented stream: torch.Generator().manual_seed(seed), torch.randperm(n)."""
    n, s = 6, 2
    x = torch.arange(n, dtype=torch.float64)[:, None]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    expected = [(perm[2 * b] + perm[2 * b + 1]) / 2 for b in range(n // s)]
    assert Bucketing(s=s, base=Mean()).pre(x)[:, 0].tolist() == expected


class _SpyBase:
    """Records the f it is called with (Bucketing hands its base a copy with f_b)."""

    def __init__(self, f: int, log: list[int]) -> None:
        self.f, self.log = f, log

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.f)
        return x.mean(dim=0)


@pytest.mark.parametrize("n,s,f,f_b", [(10, 2, 2, 2), (10, 2, 7, 5), (6, 3, 4, 2), (9, 1, 3, 3)])
def test_bucketing_scales_base_f(n: int, s: int, f: int, f_b: int) -> None:
    log: list[int] = []
    base = _SpyBase(f, log)
    Bucketing(s=s, base=base)(make_x(n, 2, 26))
    assert log == [f_b]
    assert base.f == f  # the configured base is not mutated


@pytest.mark.parametrize("c", [0.5, 3.0, 1e6])
@pytest.mark.parametrize("d", DS)
def test_clipping(c: float, d: int) -> None:
    x = make_x(9, d, seed_of(d, 27))
    agg = Clipping(c=c, base=Median())
    np.testing.assert_allclose(agg.pre(x).numpy(), ref.clipping_pre(x, c), rtol=RTOL)
    assert_matches(agg(x), ref.median(ref.clipping_pre(x, c)), x)
    assert_matches(Clipping(c=c)(x), ref.mean(ref.clipping_pre(x, c)), x)


@pytest.mark.parametrize("base", ["mean", "median"])
@params(lambda f: max(1, 2 * f), (0, 1, 2, 4, 7))
def test_arc(n: int, f: int, d: int, base: str) -> None:
    x = make_x(n, d, seed_of(n, f, d, 28))
    b, b_ref = (Mean(), ref.mean) if base == "mean" else (Median(f), ref.median)
    agg = ARC(f, b)
    np.testing.assert_allclose(agg.pre(x).numpy(), ref.arc_pre(x, f), rtol=RTOL)
    assert_matches(agg(x), b_ref(ref.arc_pre(x, f), f), x)


CTMA_BASES = {
    "median": (lambda f: Median(f), lambda f: 2 * f + 1, ref.median),
    "geomed": (lambda f: GeometricMedian(f=f), lambda f: 2 * f + 1, ref.geometric_median),
    "krum": (lambda f: Krum(f), lambda f: 2 * f + 3, ref.krum),
}


@pytest.mark.parametrize("base", list(CTMA_BASES))
@params(lambda f: 2 * f + 3, (0, 1, 2, 5))
def test_ctma(n: int, f: int, d: int, base: str) -> None:
    make, _, base_ref = CTMA_BASES[base]
    x = make_x(n, d, seed_of(n, f, d, 29))
    rtol = 1e-7 if base == "geomed" else RTOL
    assert_matches(CTMA(f, make(f))(x), ref.ctma(x, f, base_ref), x, rtol=rtol)


@params(lambda f: f + 2, (1, 3), ds=(4,))  # n = f + 1 = 2 ties exactly at the median
def test_ctma_small_n_with_median(n: int, f: int, d: int) -> None:
    x = make_x(n, d, seed_of(n, f, d, 30))
    assert_matches(CTMA(f)(x), ref.ctma(x, f, ref.median), x)


# ----------------------------------------------------------------------------- get_aggregator

SPECS = {
    "mean": (Mean, ref.mean),
    "median": (Median, ref.median),
    "cwmed": (Median, ref.median),
    "trmean": (TrimmedMean, ref.trimmed_mean),
    "trimmedmean": (TrimmedMean, ref.trimmed_mean),
    "krum": (Krum, ref.krum),
    "Krum": (Krum, ref.krum),
    "multikrum": (MultiKrum, ref.multikrum),
    "bulyan": (Bulyan, ref.bulyan),
    "meamed": (Meamed, ref.meamed),
    "monna": (MoNNA, partial(ref.monna, idx=0)),
    "mda": (MDA, ref.mda),
    "smea": (SMEA, ref.smea),
    "caf": (CAF, ref.caf),
    "geomed": (GeometricMedian, ref.geometric_median),
    "nnm+krum": (NNM, partial(ref.nnm, base=ref.krum)),
    " NNM + Krum ": (NNM, partial(ref.nnm, base=ref.krum)),
    "nnm+mean": (NNM, partial(ref.nnm, base=ref.mean)),
    "ctma+geomed": (CTMA, partial(ref.ctma, base=ref.geometric_median)),
    "ctma+median": (CTMA, partial(ref.ctma, base=ref.median)),
    "ctma+nnm+median": (
        CTMA,
        partial(ref.ctma, base=lambda x, f: ref.nnm(x, f, ref.median)),
    ),
    "geomed:nu=0.1,max_iter=3": (
        GeometricMedian,
        lambda x, f: ref.geometric_median(x, nu=0.1, max_iter=3),
    ),
    "clipping:2.5+median": (Clipping, lambda x, f: ref.median(ref.clipping_pre(x, 2.5))),
    "arc+median": (ARC, lambda x, f: ref.median(ref.arc_pre(x, f))),
    "arc+clipping:5+mean": (ARC, lambda x, f: ref.mean(ref.clipping_pre(ref.arc_pre(x, f), 5))),
    "cc:tau=0.5,iters=2": (CenteredClipping, lambda x, f: ref.CenteredClipping(0.5, 2)(x)),
}


@pytest.mark.parametrize("spec", list(SPECS))
def test_get_aggregator_matches_reference(spec: str) -> None:
    f, n, d = 2, 12, 5
    cls, want = SPECS[spec]
    agg = get_aggregator(spec, f=f)
    assert type(agg) is cls
    if hasattr(type(agg), "__dataclass_fields__") and "f" in type(agg).__dataclass_fields__:
        assert agg.f == f
    x = make_x(n, d, seed_of(n, d, 31))
    rtol = 1e-7 if "geomed" in spec else RTOL
    assert_matches(agg(x), want(x, f), x, rtol=rtol)


def test_get_aggregator_structure() -> None:
    agg = get_aggregator("ctma+nnm+median", f=3)
    assert isinstance(agg, CTMA) and agg.f == 3
    assert isinstance(agg.base, NNM) and agg.base.f == 3
    assert isinstance(agg.base.base, Median) and agg.base.base.f == 3

    b = get_aggregator("bucketing:2+median", f=2)
    assert isinstance(b, Bucketing) and b.s == 2 and b.f == 2 and b.seed == 0
    assert isinstance(b.base, Median)

    b = get_aggregator("bucketing:3,5+trmean", f=1)
    assert isinstance(b, Bucketing) and (b.s, b.seed) == (3, 5)
    assert isinstance(b.base, TrimmedMean) and b.base.f == 1

    g = get_aggregator("geomed:nu=0.1,max_iter=3")
    assert isinstance(g, GeometricMedian) and (g.nu, g.max_iter, g.eps) == (0.1, 3, 1e-6)

    k = get_aggregator("nnm+krum", f=2)
    assert isinstance(k, NNM) and isinstance(k.base, Krum) and k.base.f == 2

    m = get_aggregator("multikrum:m=4", f=1)
    assert isinstance(m, MultiKrum) and m.m == 4 and m.f == 1
    assert get_aggregator("multikrum:m=None", f=1).m is None

    assert isinstance(get_aggregator("cwmed"), Median)
    assert isinstance(get_aggregator("trmean", f=1), TrimmedMean)


def test_get_aggregator_bucketing_matches_reference() -> None:
    f, n, d = 2, 13, 4
    agg = get_aggregator("bucketing:2+median", f=f)
    want = ref.Bucketing(2, ref.median, f, seed=0)
    for k in range(2):
        x = make_x(n, d, seed_of(n, d, k, 32))
        assert_matches(agg(x), want(x), x)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("nnm++krum", "empty"),
        ("krum+", "empty"),
        ("foo", "unknown aggregator 'foo'"),
        ("nnm+foo", "unknown aggregator 'foo'"),
        ("nnm", "wrapper"),
        ("ctma+nnm", "wrapper"),
        ("krum+median", "cannot wrap"),
        ("geomed:bogus=1", "unknown parameter 'bogus'"),
        ("krum:1,2,3", "too many positional"),
        ("bucketing:2,3,4+median", "too many positional"),
    ],
)
def test_get_aggregator_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_aggregator(spec, f=1)


# ----------------------------------------------------------------------------- dtype and shape

ALL_RULES: dict[str, Callable[[], object]] = {
    "mean": Mean,
    "median": lambda: Median(2),
    "trimmedmean": lambda: TrimmedMean(2),
    "meamed": lambda: Meamed(2),
    "geomed": GeometricMedian,
    "krum": lambda: Krum(2),
    "multikrum": lambda: MultiKrum(2),
    "bulyan": lambda: Bulyan(2),
    "cc": lambda: CenteredClipping(tau=1.0, iters=2),
    "mda": lambda: MDA(2),
    "monna": lambda: MoNNA(2, idx=3),
    "caf": lambda: CAF(2),
    "smea": lambda: SMEA(2),
    "nnm+mean": lambda: NNM(2, Mean()),
    "nnm+krum": lambda: NNM(2, Krum(2)),
    "bucketing+median": lambda: Bucketing(2, Median(2), seed=1),
    "clipping+median": lambda: Clipping(1.0, Median()),
    "arc+mean": lambda: ARC(2, Mean()),
    "ctma+median": lambda: CTMA(2, Median()),
    "ctma+geomed": lambda: CTMA(2, GeometricMedian()),
    "ctma+krum": lambda: CTMA(2, Krum(2)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(ALL_RULES))
def test_dtype_and_shape_kept(name: str, dtype: torch.dtype) -> None:
    x64 = make_x(11, 6, seed_of(11, 6, 33))
    out = ALL_RULES[name]()(x64.to(dtype))  # type: ignore[operator]
    assert out.dtype == dtype
    assert out.shape == (6,)
    assert bool(torch.isfinite(out).all())
    full = ALL_RULES[name]()(x64)  # type: ignore[operator]
    np.testing.assert_allclose(out.double().numpy(), full.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(ALL_RULES))
def test_input_not_modified(name: str) -> None:
    x = make_x(11, 6, seed_of(11, 6, 34))
    before = x.clone()
    out = ALL_RULES[name]()(x)  # type: ignore[operator]
    assert torch.equal(x, before)
    out.add_(1.0)  # the output must not alias the input
    assert torch.equal(x, before)


def test_distances_are_exactly_symmetric_whatever_the_gemm() -> None:
    """A GEMM may return ``x @ x.T`` a few ulps off symmetric (it depends on the BLAS kernel the
    CPU picks): the distance matrix is exactly symmetric all the same, so the index tie-breaks
    of Krum, Bulyan and MDA agree on every machine."""
    from flwr_byz.aggregators.base import gram, pairwise_sq_distances

    x = make_x(5, 7, 0)
    g = gram(x).clone()
    g[0, 1] = torch.nextafter(g[0, 1], torch.tensor(math.inf, dtype=g.dtype))
    g[3, 2] = torch.nextafter(g[3, 2], torch.tensor(-math.inf, dtype=g.dtype))
    d = pairwise_sq_distances(x, g)
    assert torch.equal(d, d.T)
    assert torch.all(d.diagonal() == 0)
