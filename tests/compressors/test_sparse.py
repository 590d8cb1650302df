"""RandK and TopK: sizes, supports, determinism, the contraction of TopK
(docs/ALGORITHMS.md, TopK)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flwr_byz.compressors import RandK, TopK

from .reference import mixed_vector, q, randk_reference, topk_reference


@pytest.mark.parametrize(
    ("comp", "d", "k"),
    [
        (RandK(fraction=0.1), 100, 10),
        (RandK(fraction=0.001), 100, 1),  # clamped up to 1
        (RandK(fraction=1.0), 37, 37),
        (RandK(fraction=0.25), 10, 2),  # round(2.5) = 2
        (RandK(k=5), 100, 5),
        (RandK(k=500), 100, 100),  # min(k, d)
        (TopK(fraction=0.01), 100_000, 1000),
        (TopK(fraction=0.5), 1, 1),
        (TopK(k=3), 2, 2),
    ],
)
def test_k_for(comp: RandK | TopK, d: int, k: int) -> None:
    assert comp.k_for(d) == k
    payload = comp.compress(torch.randn(d), seed=1)
    assert payload["values"].shape == (k,)


def test_omega() -> None:
    assert RandK(fraction=0.1).omega == pytest.approx(9.0)
    assert math.isnan(RandK(k=10).omega)
    assert RandK(k=10).omega_for(100) == 9.0
    assert RandK(fraction=1.0).omega_for(50) == 0.0
    assert TopK(fraction=0.1).omega == 0.1
    assert math.isnan(TopK(k=10).omega)
    assert TopK(k=10).omega_for(1000) == 0.01
    assert not RandK.biased and TopK.biased


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 12345, 2**62, -3])
def test_randk_matches_reference(dtype: torch.dtype, seed: int) -> None:
    x = mixed_vector(97, dtype, seed=abs(seed) % 1000)
    comp = RandK(fraction=0.2)
    payload = comp.compress(x, seed)
    assert set(payload) == {"values", "seed"}
    assert payload["values"].shape == (19,) and payload["values"].dtype == dtype
    assert payload["seed"].dtype == torch.int64 and payload["seed"].tolist() == [seed]
    out = comp.decompress(payload, 97)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), randk_reference(x.numpy(), seed, 19), rtol=1e-6)


def test_randk_support_comes_from_the_payload_seed() -> None:
    """decompress reads the support from payload["seed"] only: another seed moves the values."""
    x = torch.arange(1.0, 51.0, dtype=torch.float64)
    comp = RandK(k=5)
    payload = comp.compress(x, seed=3)

    def placed(seed: int) -> torch.Tensor:
        out = torch.zeros(50, dtype=torch.float64)
        support = torch.randperm(50, generator=torch.Generator().manual_seed(seed))[:5]
        out[support] = payload["values"]
        return out

    moved = {"values": payload["values"], "seed": torch.tensor([4])}
    a, b = comp.decompress(payload, 50), comp.decompress(moved, 50)
    assert torch.equal(a, placed(3)) and torch.equal(b, placed(4))
    assert not torch.equal(a.nonzero(), b.nonzero())


def test_randk_full_fraction_is_identity() -> None:
    x = mixed_vector(40, torch.float64, seed=3)
    assert torch.equal(q(RandK(fraction=1.0), x, 9), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("d", "fraction"), [(1, 0.5), (7, 0.3), (100, 0.1), (1000, 0.01)])
def test_topk_matches_brute_force(dtype: torch.dtype, d: int, fraction: float) -> None:
    x = torch.tensor(np.random.default_rng(d).standard_normal(d), dtype=dtype)  # no ties
    comp = TopK(fraction=fraction)
    k = comp.k_for(d)
    payload = comp.compress(x, seed=0)
    assert payload["values"].dtype == dtype and payload["indices"].dtype == torch.int32
    assert payload["values"].shape == payload["indices"].shape == (k,)
    idx = payload["indices"].long()
    assert (idx[1:] > idx[:-1]).all()
    assert torch.equal(payload["values"], x[idx])
    out = comp.decompress(payload, d)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), topk_reference(x.numpy(), k))


def test_topk_ignores_the_seed() -> None:
    x = torch.randn(64)
    a, b = TopK(k=6).compress(x, 0), TopK(k=6).compress(x, 99)
    assert all(torch.equal(a[key], b[key]) for key in a)


def _adversarial() -> list[torch.Tensor]:
    d = 50
    spike = torch.zeros(d)
    spike[17] = -3.0
    return [
        torch.ones(d),  # all ties: the contraction holds with equality
        torch.tensor([(-1.0) ** i for i in range(d)]),
        spike,
        torch.zeros(d),
        0.5 ** torch.arange(d, dtype=torch.float64),  # geometric decay
        torch.cat([torch.zeros(d - 2), torch.tensor([1e-30, 1e30])]),
        torch.linspace(-1, 1, d),
        mixed_vector(d, torch.float32, seed=5),
    ]


@pytest.mark.parametrize("k", [1, 5, 25, 49, 50])
def test_topk_contraction(k: int) -> None:
    """||Q(x) - x||^2 <= (1 - K/d) ||x||^2 on random and adversarial inputs."""
    rng = np.random.default_rng(k)
    xs = _adversarial() + [torch.tensor(rng.standard_t(1.5, 50)) for _ in range(20)]
    for x in xs:
        x64 = x.double()
        err = float(((q(TopK(k=k), x, 0).double() - x64) ** 2).sum())
        bound = (1 - k / 50) * float((x64**2).sum())
        assert err <= bound * (1 + 1e-12), (x, err, bound)
    ties = float(((q(TopK(k=k), torch.ones(50), 0) - 1) ** 2).sum())
    assert ties == pytest.approx(50 - k)
