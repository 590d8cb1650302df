"""Omniscient attacks: IPM and ALIE exact, MinMax/MinSum gamma maximal (vs. a bisection
reference), Mimic's choice."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import pytest
import torch

from flwr_byz.attacks import ALIE, IPM, Mimic, MinMax, MinSum, alie_z, honest_stats


def _data(h: int = 8, b: int = 3, d: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    honest = torch.randn(h, d, generator=g, dtype=torch.float64) + 0.5
    own = torch.randn(b, d, generator=g, dtype=torch.float64)
    return honest, own


# ------------------------------------------------------------------------------ statistics, IPM


def test_honest_stats() -> None:
    honest, _ = _data()
    mu, sigma = honest_stats(honest)
    np.testing.assert_allclose(mu.numpy(), honest.numpy().mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), honest.numpy().std(axis=0, ddof=1), rtol=1e-12)
    mu1, sigma1 = honest_stats(honest[:1])  # one row: std 0, not NaN
    assert torch.equal(mu1, honest[0]) and torch.equal(sigma1, torch.zeros_like(mu1))


@pytest.mark.parametrize("eps", [0.1, 0.5, 2.0])
def test_ipm(eps: float) -> None:
    honest, own = _data()
    out = IPM(eps)(honest, own)
    want = -eps * honest.numpy().mean(axis=0)
    for row in out:
        np.testing.assert_allclose(row.numpy(), want, rtol=1e-12)
    assert IPM().eps == 0.1


# ----------------------------------------------------------------------------------------- ALIE


def _z_reference(n: int, b: int) -> float:
    s = math.floor(n / 2 + 1) - b
    return NormalDist().inv_cdf((n - s) / n)


def test_alie_z_matches_formula() -> None:
    checked = 0
    for n in range(2, 60):
        for b in range(n + 1):
            s = math.floor(n / 2 + 1) - b
            if 1 <= s <= n - 1:  # inside the clamp: the paper's value
                assert alie_z(n, b) == pytest.approx(_z_reference(n, b), abs=1e-12)
                checked += 1
    assert checked > 500
    # n = 50, b = 24: s = 26 - 24 = 2, z = Phi^-1(48/50) = 1.7507
    assert alie_z(50, 24) == pytest.approx(1.7507, abs=1e-4)


def test_alie_z_clamped() -> None:
    for n in (3, 10, 21):
        top = NormalDist().inv_cdf(1 - 0.5 / n)
        for b in range(math.floor(n / 2 + 1), n + 1):  # Byzantine majority: s <= 0
            assert alie_z(n, b) == pytest.approx(top)
            assert math.isfinite(alie_z(n, b))
    assert alie_z(1, 0) == pytest.approx(0.0)
    assert alie_z(2, 0) == pytest.approx(NormalDist().inv_cdf(0.25))
    for n, b in ((0, 0), (5, 6), (5, -1)):
        with pytest.raises(ValueError, match="alie_z"):
            alie_z(n, b)


@pytest.mark.parametrize("h,b", [(8, 3), (12, 5), (3, 4), (1, 2)])
def test_alie_default_z(h: int, b: int) -> None:
    honest, own = _data(h=h, b=b)
    out = ALIE()(honest, own)
    x = honest.numpy()
    sigma = x.std(axis=0, ddof=1) if h >= 2 else np.zeros(x.shape[1])
    want = x.mean(axis=0) - alie_z(h + b, b) * sigma
    assert out.shape == own.shape
    for row in out:
        np.testing.assert_allclose(row.numpy(), want, rtol=1e-12, atol=1e-12)


def test_alie_given_z() -> None:
    honest, own = _data()
    x = honest.numpy()
    out = ALIE(z=1.5)(honest, own)
    np.testing.assert_allclose(out[1].numpy(), x.mean(axis=0) - 1.5 * x.std(axis=0, ddof=1))


# ------------------------------------------------------------------------------ MinMax / MinSum


def _perturbation(kind: str, x: np.ndarray) -> np.ndarray:
    mu, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
    if kind == "std":
        return -sd / np.linalg.norm(sd)
    if kind == "unit":
        return -mu / np.linalg.norm(mu)
    return -np.sign(mu)


def _minmax_ok(x: np.ndarray, v: np.ndarray, tol: float = 0.0) -> bool:
    diam = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1).max()
    return bool(np.linalg.norm(v - x, axis=1).max() <= diam * (1 + tol))


def _minsum_ok(x: np.ndarray, v: np.ndarray, tol: float = 0.0) -> bool:
    bound = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=(1, 2)).max()
    return bool(((v - x) ** 2).sum() <= bound * (1 + tol))


def _bisection(ok: Callable[[np.ndarray, np.ndarray], bool], x: np.ndarray, p: np.ndarray) -> float:
    """Largest gamma with ok(x, mu + gamma p): double until infeasible, then bisect."""
    mu = x.mean(axis=0)
    lo, hi = 0.0, 1.0
    while ok(x, mu + hi * p):
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(x, mu + mid * p) else (lo, mid)
    return lo


OPTIMISED = [(MinMax, _minmax_ok), (MinSum, _minsum_ok)]


@pytest.mark.parametrize("cls,ok", OPTIMISED)
@pytest.mark.parametrize("kind", ["std", "unit", "sign"])
@pytest.mark.parametrize("h,seed", [(2, 0), (7, 1), (15, 2)])
def test_optimised_gamma_is_maximal(
    cls: type[MinMax], ok: Callable[..., bool], kind: str, h: int, seed: int
) -> None:
    honest, own = _data(h=h, seed=seed)
    attack = cls(kind)
    out = attack(honest, own)
    gamma = attack.last_gamma
    assert gamma is not None and gamma > 0
    x = honest.numpy()
    p = _perturbation(kind, x)
    v = x.mean(axis=0) + gamma * p
    for row in out:
        np.testing.assert_allclose(row.numpy(), v, rtol=1e-12, atol=1e-12)
    assert ok(x, v, tol=1e-9)  # the constraint holds at gamma
    assert not ok(x, x.mean(axis=0) + gamma * (1 + 1e-3) * p)  # and gamma is the largest
    assert gamma == pytest.approx(_bisection(ok, x, p), rel=1e-8)


@pytest.mark.parametrize("cls,ok", OPTIMISED)
def test_optimised_float32_large_offset(cls: type[MinMax], ok: Callable[..., bool]) -> None:
    honest, own = _data(h=10, d=200)
    honest32 = (honest + 1e3).float()  # a large common offset: the centred Gram stays accurate
    attack = cls()
    out = attack(honest32, own.float())
    assert out.dtype == torch.float32
    x = honest32.double().numpy()
    assert ok(x, out[0].double().numpy(), tol=1e-4)
    gamma = attack.last_gamma
    assert gamma is not None
    assert gamma == pytest.approx(_bisection(ok, x, _perturbation("std", x)), rel=1e-4)


@pytest.mark.parametrize("cls", [MinMax, MinSum])
@pytest.mark.parametrize("kind", ["std", "unit", "sign"])
def test_optimised_degenerate(cls: type[MinMax], kind: str) -> None:
    row = torch.linspace(-1, 2, 9, dtype=torch.float64)
    for honest in (row.expand(4, -1).clone(), row[None]):  # all equal; a single row
        attack = cls(kind)
        out = attack(honest, torch.zeros(2, 9, dtype=torch.float64))
        assert attack.last_gamma == 0.0
        assert torch.allclose(out, row.expand(2, -1), rtol=0, atol=1e-12)
    zero = torch.zeros(3, 4, dtype=torch.float64)
    attack = cls(kind)
    assert torch.equal(attack(zero, zero[:2]), zero[:2])


def test_optimised_bad_perturbation() -> None:
    with pytest.raises(ValueError, match="perturbation"):
        MinMax("random")


# ---------------------------------------------------------------------------------------- Mimic


def _principal_reference(x: np.ndarray) -> int:
    c = x - x.mean(axis=0)
    v = np.linalg.svd(c, full_matrices=False)[2][0]
    return int(np.argmax(np.abs(c @ v)))


def test_mimic_default_choice_fixed() -> None:
    honest, own = _data(h=9, d=40, seed=3)
    honest[4] += 8.0  # a clear top principal direction through row 4
    attack = Mimic()
    out = attack(honest, own)
    assert attack.chosen == _principal_reference(honest.numpy()) == 4
    for row in out:
        assert torch.equal(row, honest[4])
    other, _ = _data(h=9, d=40, seed=7)
    other[0] += 8.0
    assert torch.equal(attack(other, own)[0], other[4])  # fixed after the first call
    assert torch.equal(attack(other[:3], own)[0], other[4 % 3])  # fewer rows: idx % h
    attack.reset()
    assert attack.chosen is None
    assert torch.equal(attack(other, own)[0], other[0])


@pytest.mark.parametrize("seed", range(5))
def test_mimic_matches_svd_reference(seed: int) -> None:
    honest, own = _data(h=12, d=25, seed=seed)
    out = Mimic()(honest, own)
    i = _principal_reference(honest.numpy())
    assert all(torch.equal(row, honest[i]) for row in out)


def test_mimic_given_idx_and_degenerate() -> None:
    honest, own = _data(h=5)
    assert torch.equal(Mimic(idx=2)(honest, own)[0], honest[2])
    assert torch.equal(Mimic(idx=7)(honest, own)[0], honest[7 % 5])
    same = honest[:1].expand(4, -1).clone()
    assert torch.equal(Mimic()(same, own)[0], same[0])
    with pytest.raises(ValueError, match="idx"):
        Mimic(idx=-1)
