"""DnC, Divide-and-Conquer (Shejwalkar & Houmansadr, NDSS 2021, Alg. 2): spectral filtering
on random coordinate subsets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import _own_f, check_f, check_input, lowest, mean_of_rows

__all__ = ["DnC"]


@dataclass
class DnC:
    """Divide-and-Conquer (Shejwalkar & Houmansadr 2021, Alg. 2). ``iters`` times: draw
    ``b`` of the d coordinates at random (``torch.randperm(d)[:b]`` from a generator seeded
    with ``seed``, advancing each call; ``reset()`` reseeds), centre the inputs restricted to
    them, take the top right singular vector ``v`` of the centred ``[n, b]`` matrix, score
    ``s_i = <x_i - mu, v>^2`` and keep the ``n - floor(c f)`` lowest (ties by index). The
    output is the mean of the inputs kept in every iteration (if none is, possible only when
    ``iters * floor(c f) >= n``, of those kept in the last one). Defaults as the paper's
    evaluation: ``c = 1``, ``iters = 1``, ``b = 10000`` (at most d). Requires n > c f.

    ``v`` is never formed: ``<x_i - mu, v>^2 = lambda u_i^2`` with ``(lambda, u)`` the top
    eigenpair of the ``[n, n]`` centred Gram matrix of the subset (float64). Cost: a gather of
    ``n b`` entries per iteration and one GEMV over ``x``.
    """

    f: int = 0
    c: float = 1.0
    iters: int = 1
    b: int = 10000
    seed: int = 0
    _gen: torch.Generator = field(init=False, repr=False)

    requires: ClassVar[str] = "n > c f"

    def removed(self, f: int | None = None) -> int:
        """How many inputs each iteration removes: floor(c f) (None: ``self.f``)."""
        return math.floor(self.c * _own_f(self, f) + 1e-9)

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n > floor(c f)."""
        return self.removed(f) + 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)
        if not (isinstance(self.c, (int, float)) and 0 <= self.c < float("inf")):
            raise ValueError(f"DnC needs a filtering fraction c >= 0, got c={self.c!r}")
        if not (isinstance(self.iters, int) and self.iters >= 1):
            raise ValueError(f"DnC needs iters >= 1, got iters={self.iters!r}")
        if not (isinstance(self.b, int) and self.b >= 1):
            raise ValueError(f"DnC needs a subset size b >= 1, got b={self.b!r}")
        self.reset()

    def reset(self) -> None:
        """Restart the coordinate draws from ``seed``."""
        self._gen = torch.Generator().manual_seed(self.seed)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean ``[n]`` mask of the inputs kept (the good set)."""
        cut = self.removed()
        check_input(x, f"DnC(f={self.f})", cut + 1, f"n > c f = {self.c * self.f:g}")
        n, d = x.shape
        b = min(self.b, d)
        good = torch.ones(n, dtype=torch.bool)
        keep = good
        for _ in range(self.iters):
            cols = torch.randperm(d, generator=self._gen)[:b].sort().values
            sub = x[:, cols.to(x.device)].double().cpu()
            sub = sub - sub.mean(dim=0)
            evals, evecs = torch.linalg.eigh(sub @ sub.T)
            scores = evals[-1].clamp_min(0.0) * evecs[:, -1].square()
            keep = torch.zeros(n, dtype=torch.bool)
            keep[lowest(scores, n - cut)] = True
            good = good & keep
        if not bool(good.any()):
            good = keep
        return good.to(x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return mean_of_rows(x, self.select(x).nonzero().flatten())
