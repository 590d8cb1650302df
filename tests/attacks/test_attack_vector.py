"""Per-node attacks: exact values, Gaussian statistics and seeding, NonFinite kinds."""

from __future__ import annotations

import math

import pytest
import torch

from flwr_byz.attacks import BitFlip, Gaussian, NoAttack, NonFinite, Scale, SignFlip


def _own(b: int = 3, d: int = 7, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(b, d, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _empty(d: int = 7) -> torch.Tensor:
    return torch.empty(0, d, dtype=torch.float64)


def test_no_attack_returns_own() -> None:
    own = _own()
    out = NoAttack()(_empty(), own)
    assert torch.equal(out, own)
    assert out.data_ptr() != own.data_ptr()


@pytest.mark.parametrize("scale", [1.0, 10.0, 0.5])
def test_sign_flip(scale: float) -> None:
    own = _own()
    assert torch.equal(SignFlip(scale)(_empty(), own), -scale * own)


def test_sign_flip_default_and_bit_flip() -> None:
    own = _own()
    assert torch.equal(SignFlip()(_empty(), own), -own)
    assert torch.equal(BitFlip()(_empty(), own), -own)
    assert BitFlip().scale == 1.0
    with pytest.raises(TypeError):
        BitFlip(2.0)  # type: ignore[call-arg]


def test_scale() -> None:
    own = _own()
    assert torch.equal(Scale(3.0)(_empty(), own), 3.0 * own)
    assert torch.equal(Scale()(_empty(), own), 10.0 * own)


def test_per_node_attacks_ignore_honest() -> None:
    own = _own()
    honest = torch.randn(5, 7, dtype=torch.float64)
    for attack in (SignFlip(2.0), Scale(3.0), NoAttack()):
        assert torch.equal(attack(honest, own), attack(_empty(), own))
    assert torch.equal(Gaussian(seed=4)(honest, own), Gaussian(seed=4)(_empty(), own))


def test_gaussian_statistics() -> None:
    own = torch.zeros(4, 20_000, dtype=torch.float64)
    out = Gaussian(sigma=2.0, seed=0)(_empty(20_000), own)
    assert out.shape == own.shape
    assert abs(float(out.mean())) < 0.05  # std of the mean: 2 / sqrt(80k) = 0.007
    assert abs(float(out.std()) - 2.0) < 0.05
    for row in out:  # every node's vector has the right spread on its own
        assert abs(float(row.std()) - 2.0) < 0.1
    assert not torch.equal(out[0], out[1])  # fresh per node


def test_gaussian_seeding() -> None:
    own = _own(b=2, d=100)
    a, b = Gaussian(seed=5), Gaussian(seed=5)
    first_a, second_a = a(_empty(100), own), a(_empty(100), own)
    assert torch.equal(first_a, b(_empty(100), own))  # same seed, same sequence
    assert torch.equal(second_a, b(_empty(100), own))
    assert not torch.equal(first_a, second_a)  # fresh per call
    assert not torch.equal(first_a, Gaussian(seed=6)(_empty(100), own))
    a.reset()
    assert torch.equal(a(_empty(100), own), first_a)


def test_gaussian_sigma_zero_and_negative() -> None:
    zero = torch.zeros(3, 7, dtype=torch.float64)
    assert torch.equal(Gaussian(sigma=0.0)(_empty(), _own()), zero)
    with pytest.raises(ValueError, match="sigma"):
        Gaussian(sigma=-1.0)


@pytest.mark.parametrize("kind,value", [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)])
def test_non_finite_kinds(kind: str, value: float) -> None:
    out = NonFinite(kind)(_empty(), _own())
    assert out.shape == (3, 7)
    if math.isnan(value):
        assert bool(out.isnan().all())
    else:
        assert bool((out == value).all())


def test_non_finite_mix() -> None:
    own = _own(b=4, d=300)
    attack = NonFinite("mix", seed=2)
    out = attack(_empty(300), own)
    assert not bool(torch.isfinite(out).any())
    assert bool(out.isnan().any()) and bool((out == math.inf).any())
    assert bool((out == -math.inf).any())
    again = NonFinite("mix", seed=2)(_empty(300), own)
    assert torch.equal(out.isnan(), again.isnan())
    assert torch.equal(out.nan_to_num(), again.nan_to_num())
    assert not torch.equal(attack(_empty(300), own).nan_to_num(), out.nan_to_num())


def test_non_finite_bad_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        NonFinite("zero")
    assert NonFinite("INF").kind == "inf"
