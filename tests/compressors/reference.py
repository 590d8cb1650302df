"""Brute-force references and shared helpers for the compressor tests.

NumPy / plain-Python reimplementations of each ``Q`` (its support, brackets and exact variance),
the test vectors, and a sampler of ``Q(x)`` over many seeds.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from flwr_byz.compressors import QSGD, Compressor, Identity, Natural, RandK, TopK

E_MIN, E_MAX = -126, 126  # Natural's finite exponent range (float32's normal powers of two)


def make_compressors() -> dict[str, Compressor]:
    """One instance of each compressor, by test id."""
    return {
        "identity": Identity(),
        "randk": RandK(fraction=0.1),
        "randk-k": RandK(k=7),
        "topk": TopK(fraction=0.1),
        "natural": Natural(),
        "qsgd": QSGD(s=4),
        "qsgd16": QSGD(s=300),
    }


def mixed_vector(d: int, dtype: torch.dtype, seed: int, span: int = 20) -> torch.Tensor:
    """Random signs, magnitudes ``2^U(-span, span)``, some zeros and exact powers of two."""
    rng = np.random.default_rng(seed)
    mag = 2.0 ** rng.uniform(-span, span, d)
    mag[rng.choice(d, d // 10, replace=False)] = 0.0
    powers = rng.choice(d, d // 10, replace=False)
    mag[powers] = 2.0 ** rng.integers(-span, span, len(powers)).astype(float)
    sign = rng.choice([-1.0, 1.0], d)
    return torch.tensor(sign * mag, dtype=dtype)


def input_vectors() -> dict[str, torch.Tensor]:
    """Inputs of the statistical tests, by id (d between 60 and 200)."""
    rng = np.random.default_rng(7)
    gauss = rng.standard_normal(200)
    gauss[::13] = 0.0
    a = rng.integers(-8, 8, 64).astype(float)
    worst = rng.choice([-1.0, 1.0], 64) * (4 / 3) * 2.0**a  # Natural's worst case: var = |x|^2/8
    tiny = rng.uniform(0.05, 15.9, 60) * 2.0**-130  # below Natural's smallest power 2^-126
    tiny[::7] *= -1
    return {
        "gauss-f32": torch.tensor(gauss, dtype=torch.float32),
        "mixed-f32": mixed_vector(150, torch.float32, seed=1),
        "mixed-f64": mixed_vector(120, torch.float64, seed=2, span=40),
        "natural-worst-f64": torch.tensor(worst, dtype=torch.float64),
        "tiny-f64": torch.tensor(tiny, dtype=torch.float64),
    }


def q(comp: Compressor, x: torch.Tensor, seed: int) -> torch.Tensor:
    """``Q(x)`` for one seed: ``decompress(compress(x, seed), d)``."""
    return comp.decompress(comp.compress(x, seed), x.numel())


@cache
def samples(comp_id: str, x_id: str, n: int) -> np.ndarray:
    """``Q(x)`` for seeds ``0..n-1`` as a float64 ``[n, d]`` array (cached per test session)."""
    comp, x = make_compressors()[comp_id], input_vectors()[x_id]
    out = np.empty((n, x.numel()))
    for seed in range(n):
        out[seed] = q(comp, x, seed).numpy()
    return out


def exact_variance(comp: Compressor, x: np.ndarray) -> np.ndarray:
    """Per-coordinate ``Var Q(x)_i`` of the unbiased compressors, from their definitions."""
    d = x.size
    if isinstance(comp, Identity):
        return np.zeros(d)
    if isinstance(comp, RandK):
        k = comp.k_for(d)
        return x**2 * (d / k - 1)
    if isinstance(comp, Natural):
        lo, hi = natural_brackets(x)
        return (hi - np.abs(x)) * (np.abs(x) - lo)
    if isinstance(comp, QSGD):
        norm = float(np.linalg.norm(x))
        r = comp.s * np.abs(x) / norm if norm > 0 else np.zeros(d)
        frac = r - np.floor(r)
        return (norm / comp.s) ** 2 * frac * (1 - frac)
    raise TypeError(f"no variance reference for {comp!r}")


def natural_brackets(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two values Natural may round ``|x_i|`` to (coordinate by coordinate, with
    ``math.frexp``): ``2^a <= |x_i| < 2^(a+1)``, ``(0, 2^-126)`` below the range, ``2^126``
    twice from ``2^126`` up, ``(0, 0)`` for zero."""
    lo, hi = np.zeros(x.size), np.zeros(x.size)
    for i, v in enumerate(np.abs(x).tolist()):
        if v == 0:
            continue
        _, e = math.frexp(v)  # v = m 2^e, m in [0.5, 1)
        a = e - 1
        if a < E_MIN:
            lo[i], hi[i] = 0.0, 2.0**E_MIN
        elif a >= E_MAX:
            lo[i] = hi[i] = 2.0**E_MAX
        else:
            lo[i], hi[i] = 2.0**a, 2.0 ** (a + 1)
    return lo, hi


def randk_reference(x: np.ndarray, seed: int, k: int) -> np.ndarray:
    """RandK's ``Q(x)``: the support is ``randperm(d)[:K]`` of a CPU generator seeded with
    ``seed`` (the contract), each kept coordinate scaled by ``d/K``."""
    d = x.size
    idx = torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:k].numpy()
    out = np.zeros(d, dtype=x.dtype)
    out[idx] = x[idx] * (d / k)
    return out


def topk_reference(x: np.ndarray, k: int) -> np.ndarray:
    """TopK's ``Q(x)`` by sorting magnitudes (ties: any, so compare only on tie-free x)."""
    idx = np.argsort(-np.abs(x), kind="stable")[:k]
    out = np.zeros_like(x)
    out[idx] = x[idx]
    return out


def qsgd_level_bounds(x: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """``floor`` and ``ceil`` of ``r_i = s |x_i| / ||x||`` (zeros for ``x = 0``), computed in
    float64 with a few ulps of ``x``'s dtype of slack (the compressor rounds in that dtype)."""
    slack = 4 * float(np.finfo(x.dtype).eps)
    x64 = x.astype(np.float64)
    norm = float(np.linalg.norm(x64))
    r = s * np.abs(x64) / norm if norm > 0 else np.zeros(x.size)
    return np.floor(r * (1 - slack)), np.ceil(r * (1 + slack))


def raw_nbytes(payload: dict[str, torch.Tensor]) -> int:
    """Bytes of the payload's tensor data."""
    return sum(t.numel() * t.element_size() for t in payload.values())
