"""Pre-aggregators: transform the inputs, then hand them to a base rule.

Bucketing (Karimireddy, He & Jaggi 2022, Alg. 1), static Clipping, and ARC, adaptive robust
clipping (Allouah et al. 2024, Alg. 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import (
    Aggregator,
    _own_f,
    accepts,
    check_f,
    check_finite,
    check_input,
    max_inputs,
    min_inputs,
    set_f,
    with_f,
)
from .coordinate import Mean, Median

__all__ = ["ARC", "Bucketing", "Clipping", "clip_scales"]


def checked_norms(x: torch.Tensor, rule: str) -> torch.Tensor:
    """Row norms of a checked input; they double as its NaN/Inf check (both propagate into
    the norm), saving the separate pass over ``x``."""
    check_input(x, rule, finite=False)
    norms = torch.linalg.vector_norm(x, dim=1)
    check_finite(x, norms, rule)
    return norms


def clip_scales(norms: torch.Tensor, c: torch.Tensor | float) -> torch.Tensor:
    """The factors ``min(1, c / ||x_i||)`` (``[n]``) that clip rows of these norms to ``c``."""
    return (c / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp(max=1.0)


class _RowScaling:
    """Pre-aggregators that rescale each input row (``scales(x)``, ``[n]``), then ``base``."""

    base: Aggregator

    def scales(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def min_inputs(self, f: int | None = None) -> int:
        """What ``base`` needs (a rescaling keeps the n inputs)."""
        return max(1, min_inputs(self.base, f))

    def max_inputs(self, f: int | None = None) -> int | None:
        """``base``'s upper limit, if it has one."""
        return max_inputs(self.base, f)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """The rescaled inputs ``diag(scales) x``."""
        return x * self.scales(x)[:, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``base(pre(x))``. For a Mean base this is one GEMV, ``scales @ x / n``, and the
        rescaled copy of ``x`` is never made (Clipping+Mean, ARC+Mean: 2 passes over ``x``).
        """
        if type(self.base) is Mean:
            return (self.scales(x) / x.shape[0]) @ x
        return self.base(self.pre(x))


@dataclass
class Bucketing:
    """Bucketing (Karimireddy et al. 2022, Alg. 1): shuffle the inputs (seeded), average
    consecutive buckets of ``s`` (the last may be smaller), apply ``base`` to the bucket means.

    The base tolerates ``f`` (default: ``base.f``); on the bucket means it is run with
    ``f_b = min(f, number of buckets)``, since f Byzantine inputs touch at most f buckets. The
    permutation generator advances each call (a fresh shuffle per round); ``reset()`` reseeds.
    """

    s: int = 2
    base: Aggregator = field(default_factory=Median)
    seed: int = 0
    f: int | None = None
    _gen: torch.Generator = field(init=False, repr=False)
    requires: ClassVar[str] = "what the base needs on the ceil(n/s) bucket means"

    def __post_init__(self) -> None:
        if self.s < 1:
            raise ValueError(f"Bucketing needs a bucket size s >= 1, got s={self.s}")
        self.f = check_f(self.base.f if self.f is None else self.f)
        self.reset()

    def reset(self) -> None:
        """Restart the permutation sequence from ``seed``."""
        self._gen = torch.Generator().manual_seed(self.seed)

    def _accepts(self, n: int, f: int | None) -> bool:
        """Whether the base runs on the ``ceil(n / s)`` bucket means of ``n`` inputs, set for
        ``min(f, buckets)`` as ``__call__`` sets it."""
        nb = math.ceil(n / self.s)
        return accepts(with_f(set_f(self.base, f), min(_own_f(self, f), nb)), nb)

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: its own f): enough for the
        base on the ``ceil(n / s)`` bucket means."""
        top = self.s * (min_inputs(set_f(self.base, f), f) + 1)
        return next((n for n in range(1, top + 1) if self._accepts(n, f)), top + 1)

    def max_inputs(self, f: int | None = None) -> int | None:
        """``s`` times the base's upper limit on the bucket means, if it has one."""
        top = max_inputs(set_f(self.base, f), f)
        return None if top is None else self.s * top

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """The bucket means (``[ceil(n/s), d]``)."""
        check_input(x, "Bucketing")
        n = x.shape[0]
        nb = math.ceil(n / self.s)
        perm = torch.randperm(n, generator=self._gen).to(x.device)
        bucket = torch.empty(n, dtype=torch.long, device=x.device)
        bucket[perm] = torch.arange(n, device=x.device) // self.s
        sizes = torch.bincount(bucket, minlength=nb).to(x.dtype)
        w = torch.zeros(nb, n, dtype=x.dtype, device=x.device)
        w[bucket, torch.arange(n, device=x.device)] = 1.0 / sizes[bucket]
        return w @ x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        means = self.pre(x)
        return with_f(self.base, min(int(self.f or 0), means.shape[0]))(means)


@dataclass
class Clipping(_RowScaling):
    """Static clipping: ``x_i <- x_i min(1, c / ||x_i||)``, then ``base``."""

    c: float = 1.0
    base: Aggregator = field(default_factory=Mean)

    def __post_init__(self) -> None:
        if self.c <= 0:
            raise ValueError(f"Clipping needs c > 0, got c={self.c}")

    @property
    def f(self) -> int:
        return self.base.f

    @f.setter
    def f(self, value: int) -> None:
        self.base.f = value

    def scales(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row clipping factors ``min(1, c / ||x_i||)``."""
        return clip_scales(checked_norms(x, "Clipping"), self.c)


@dataclass
class ARC(_RowScaling):
    """Adaptive Robust Clipping (Allouah et al. 2024, Alg. 1): with k = floor(2 (f/n)(n - f)),
    clip every input to the (k+1)-th largest input norm, then ``base``.
    """

    f: int = 0
    base: Aggregator = field(default_factory=Mean)

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def scales(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row factors clipping every input to the (k+1)-th largest norm."""
        norms = checked_norms(x, f"ARC(f={self.f})")
        n = x.shape[0]
        k = max(math.floor(2 * (self.f / n) * (n - self.f)), 0)  # f > n: no clipping
        return clip_scales(norms, norms.topk(k + 1).values[-1])
