"""Input validation: every rule raises ``ValueError`` with a message that names the problem."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from flwr_byz.aggregators import (
    ARC,
    CAF,
    CTMA,
    MDA,
    NNM,
    SMEA,
    Aggregator,
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


def x_of(n: int, d: int = 3, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64).to(
        dtype
    )


# ----------------------------------------------------------------------------- n too small for f

# (rule, f, smallest valid n, regex the message must match)
TOO_SMALL: list[tuple[str, Callable[[int], Aggregator], int, int, str]] = [
    ("krum", Krum, 2, 7, r"Krum\(f=2\) needs n >= 2f \+ 3 = 7"),
    ("krum-f0", Krum, 0, 3, r"Krum\(f=0\) needs n >= 2f \+ 3 = 3"),
    ("multikrum", MultiKrum, 3, 9, r"MultiKrum\(f=3\) needs n >= 2f \+ 3 = 9"),
    ("bulyan", Bulyan, 2, 11, r"Bulyan\(f=2\) needs n >= 4f \+ 3 = 11"),
    ("bulyan-f1", Bulyan, 1, 7, r"Bulyan\(f=1\) needs n >= 4f \+ 3 = 7"),
    ("trimmedmean", TrimmedMean, 2, 5, r"TrimmedMean\(f=2\) needs n > 2f = 4"),
    ("caf", CAF, 3, 7, r"CAF\(f=3\) needs n > 2f = 6"),
    ("meamed", Meamed, 4, 5, r"Meamed\(f=4\) needs n > f = 4"),
    ("monna", lambda f: MoNNA(f, idx=0), 3, 4, r"MoNNA\(f=3\) needs n > f = 3"),
    ("ctma", lambda f: CTMA(f, Mean()), 3, 4, r"CTMA\(f=3\) needs n > f = 3"),
    ("nnm", lambda f: NNM(f, Mean()), 3, 4, r"NNM\(f=3\) needs n > f = 3"),
    ("mda", MDA, 3, 7, r"MDA\(f=3\) needs n >= 2f \+ 1 = 7"),
    ("smea", SMEA, 2, 3, r"SMEA\(f=2\) needs n > f = 2"),
    ("mean", lambda f: Mean(), 0, 1, r"Mean needs n >= 1"),
    ("median", Median, 0, 1, r"Median needs n >= 1"),
    ("geomed", lambda f: GeometricMedian(), 0, 1, r"GeometricMedian needs n >= 1"),
    ("cc", lambda f: CenteredClipping(), 0, 1, r"CenteredClipping needs n >= 1"),
    ("bucketing", lambda f: Bucketing(2, Median()), 0, 1, r"Bucketing needs n >= 1"),
    ("clipping", lambda f: Clipping(1.0, Mean()), 0, 1, r"Clipping needs n >= 1"),
    ("arc", lambda f: ARC(f, Mean()), 0, 1, r"ARC\(f=0\) needs n >= 1"),
]


@pytest.mark.parametrize(
    "make,f,n_min,message", [t[1:] for t in TOO_SMALL], ids=[t[0] for t in TOO_SMALL]
)
def test_too_few_inputs(
    make: Callable[[int], Aggregator], f: int, n_min: int, message: str
) -> None:
    agg = make(f)
    with pytest.raises(ValueError, match=message + rf".*got n={n_min - 1}"):
        agg(x_of(n_min - 1))
    out = agg(x_of(n_min))  # the boundary itself is accepted
    assert out.shape == (3,)


def test_too_few_inputs_reported_by_the_base() -> None:
    """NNM itself accepts n > f, its Krum base then needs n >= 2f + 3."""
    with pytest.raises(ValueError, match=r"Krum\(f=2\) needs n >= 2f \+ 3"):
        NNM(2, Krum(2))(x_of(5))
    with pytest.raises(ValueError, match=r"Krum\(f=2\) needs n >= 2f \+ 3"):
        get_aggregator("ctma+krum", f=2)(x_of(6))


# ----------------------------------------------------------------------------- malformed input

ALL: dict[str, Callable[[], Aggregator]] = {
    "mean": Mean,
    "median": Median,
    "trimmedmean": lambda: TrimmedMean(1),
    "meamed": lambda: Meamed(1),
    "geomed": GeometricMedian,
    "krum": lambda: Krum(1),
    "multikrum": lambda: MultiKrum(1),
    "bulyan": lambda: Bulyan(1),
    "cc": CenteredClipping,
    "mda": lambda: MDA(1),
    "monna": lambda: MoNNA(1),
    "caf": lambda: CAF(1),
    "smea": lambda: SMEA(1),
    "nnm+mean": lambda: NNM(1, Mean()),
    "nnm+krum": lambda: NNM(1, Krum(1)),
    "bucketing+median": lambda: Bucketing(2, Median()),
    "clipping+mean": lambda: Clipping(1.0, Mean()),
    "arc+median": lambda: ARC(1, Median()),
    "ctma+median": lambda: CTMA(1, Median()),
    "ctma+geomed": lambda: CTMA(1, GeometricMedian()),
}
NAMES = list(ALL)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(8,), (2, 4, 3), ()])
def test_input_not_2d(name: str, shape: tuple[int, ...]) -> None:
    x = torch.ones(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"expected a 2-D tensor \[n, d\], got shape"):
        ALL[name]()(x)


@pytest.mark.parametrize("name", NAMES)
def test_input_not_a_tensor(name: str) -> None:
    with pytest.raises(ValueError, match=r"expected a torch\.Tensor"):
        ALL[name]()(np.ones((8, 3)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_dtype(name: str, dtype: torch.dtype) -> None:
    x = torch.ones(8, 3, dtype=dtype)
    with pytest.raises(ValueError, match="expected a floating-point tensor, got dtype"):
        ALL[name]()(x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_input(name: str, bad: float, dtype: torch.dtype) -> None:
    x = x_of(8, 3, dtype)
    x[5, 2] = bad
    with pytest.raises(ValueError, match=r"input rows \[5\] contain NaN or Inf"):
        ALL[name]()(x)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_rows_are_all_listed(name: str) -> None:
    x = x_of(8)
    x[1, 0] = float("nan")
    x[6, 1] = float("inf")
    x[6, 2] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1, 6\] contain NaN or Inf"):
        ALL[name]()(x)


def test_large_finite_values_are_not_mistaken_for_inf() -> None:
    """The cheap NaN/Inf screen sums x, which overflows here; the input is still valid."""
    x = torch.full((5, 2), 1e308, dtype=torch.float64)
    x[0] = 0.0
    assert Median()(x).tolist() == [1e308, 1e308]
    big32 = x.float().clamp(max=3e38)  # float32 too
    assert torch.equal(Median()(big32), big32[1])


# ----------------------------------------------------------------------------- bad parameters

WITH_F: dict[str, Callable[[object], object]] = {
    "median": lambda f: Median(f),  # type: ignore[arg-type]
    "trimmedmean": lambda f: TrimmedMean(f),  # type: ignore[arg-type]
    "meamed": lambda f: Meamed(f),  # type: ignore[arg-type]
    "geomed": lambda f: GeometricMedian(f=f),  # type: ignore[arg-type]
    "krum": lambda f: Krum(f),  # type: ignore[arg-type]
    "multikrum": lambda f: MultiKrum(f),  # type: ignore[arg-type]
    "bulyan": lambda f: Bulyan(f),  # type: ignore[arg-type]
    "cc": lambda f: CenteredClipping(f=f),  # type: ignore[arg-type]
    "mda": lambda f: MDA(f),  # type: ignore[arg-type]
    "monna": lambda f: MoNNA(f),  # type: ignore[arg-type]
    "caf": lambda f: CAF(f),  # type: ignore[arg-type]
    "smea": lambda f: SMEA(f),  # type: ignore[arg-type]
    "nnm": lambda f: NNM(f, Mean()),  # type: ignore[arg-type]
    "ctma": lambda f: CTMA(f, Median()),  # type: ignore[arg-type]
    "arc": lambda f: ARC(f, Mean()),  # type: ignore[arg-type]
    "bucketing": lambda f: Bucketing(2, Median(), f=f),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("name", list(WITH_F))
@pytest.mark.parametrize("f", [-1, -5, 1.5, "2", True, None])
def test_invalid_f(name: str, f: object) -> None:
    if name == "bucketing" and f is None:
        pytest.skip("Bucketing(f=None) means: take the base's f")
    with pytest.raises(ValueError, match="f must be a non-negative integer"):
        WITH_F[name](f)


def test_mean_rejects_negative_f() -> None:
    """Mean tolerates no Byzantine input, but like every rule it should refuse a negative
    count rather than carry it (get_aggregator("mean", f=-1) would build it silently)."""
    with pytest.raises(ValueError, match="f must be a non-negative integer"):
        Mean(f=-1)
    with pytest.raises(ValueError, match="f must be a non-negative integer"):
        get_aggregator("mean", f=-1)


@pytest.mark.parametrize("name", list(WITH_F))
def test_numpy_integer_f_accepted(name: str) -> None:
    agg = WITH_F[name](np.int64(1))
    assert agg.f == 1 and type(agg.f) is int  # type: ignore[attr-defined]


@pytest.mark.parametrize("spec", ["krum", "nnm+median", "ctma+geomed", "bucketing:2+median"])
def test_get_aggregator_negative_f(spec: str) -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        get_aggregator(spec, f=-1)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: GeometricMedian(nu=0.0), "nu > 0"),
        (lambda: GeometricMedian(eps=-1.0), "eps >= 0"),
        (lambda: GeometricMedian(max_iter=-1), "max_iter >= 0"),
        (lambda: CenteredClipping(tau=0.0), "tau > 0"),
        (lambda: CenteredClipping(iters=0), "iters >= 1"),
        (lambda: MultiKrum(1, m=0), "m >= 1"),
        (lambda: Bucketing(s=0), "s >= 1"),
        (lambda: Clipping(c=0.0), "c > 0"),
        (lambda: Clipping(c=-1.0), "c > 0"),
    ],
)
def test_invalid_parameters(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("idx", [8, 100, -9])
def test_monna_index_out_of_range(idx: int) -> None:
    with pytest.raises(ValueError, match=rf"MoNNA: idx={idx} is out of range for n=8"):
        MoNNA(1, idx=idx)(x_of(8))


# ----------------------------------------------------------------------------- combinatorial limits


def test_mda_refuses_large_f() -> None:
    MDA(24)  # the limit itself is accepted
    with pytest.raises(ValueError, match="MDA supports f <= 24"):
        MDA(25)
    with pytest.raises(ValueError, match="MDA supports f <= 24"):
        get_aggregator("mda", f=30)


def test_mda_search_budget() -> None:
    """A random cloud with n = 40, f = 12 needs many branch nodes: a tiny max_nodes must raise
    (naming the limit) instead of running on, and a generous one must succeed."""
    x = x_of(40, 5)
    with pytest.raises(ValueError, match=r"MDA\(f=12\).*exceeded 50 branch nodes"):
        MDA(12, max_nodes=50)(x)
    assert MDA(3)(x).shape == (5,)


def test_smea_refuses_too_many_subsets() -> None:
    with pytest.raises(ValueError, match=r"C\(12, 5\) = 792 subsets, above max_subsets=100"):
        SMEA(5, max_subsets=100)(x_of(12))
    assert SMEA(5, max_subsets=792)(x_of(12)).shape == (3,)


def test_smea_refuses_before_enumerating() -> None:
    """C(60, 20) ~ 4e15: the refusal must come from the count, not from a timeout."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match="max_subsets"):
        SMEA(20)(x_of(60))
    assert time.perf_counter() - start < 1.0
