"""Nearest-neighbour rules: NNM (Allouah et al. 2023) and MoNNA (Farhadkhani et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import (
    Aggregator,
    KeepsAllButF,
    _own_f,
    check_f,
    check_input,
    lowest,
    mean_of_rows,
    pairwise_sq_distances,
    smallest_in_rows,
    sq_distances_to,
)
from .coordinate import Mean

__all__ = ["NNM", "MoNNA", "nearest_neighbour_means"]


def nearest_neighbour_means(x: torch.Tensor, k: int) -> torch.Tensor:
    """``y_i`` = mean of the ``k`` inputs nearest to ``x_i`` (``x_i`` included; distance ties
    by index), for every i at once: a 0/(1/k) selection matrix times ``x`` (one GEMM).
    """
    n = x.shape[0]
    nearest = smallest_in_rows(pairwise_sq_distances(x), k)
    w = torch.zeros(n, n, dtype=x.dtype, device=x.device).masked_fill_(nearest, 1.0 / k)
    return w @ x


@dataclass
class NNM(KeepsAllButF):
    """Nearest Neighbour Mixing (Allouah et al. 2023, Alg. 1): replace each ``x_i`` by the mean
    of its n - f nearest inputs, then apply ``base``. Requires n > f and what ``base`` needs.
    """

    f: int = 0
    base: Aggregator = field(default_factory=Mean)

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """The mixed vectors ``y`` (``[n, d]``)."""
        check_input(x, f"NNM(f={self.f})", self.f + 1, f"n > f = {self.f}")
        return nearest_neighbour_means(x, x.shape[0] - self.f)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.pre(x))


@dataclass
class MoNNA:
    """MoNNA (Farhadkhani et al. 2023): the mean of the n - f inputs nearest to ``x_idx``, the
    vector of a trusted node (peer-to-peer use; ties by index). Requires n > f.
    """

    f: int = 0
    idx: int = 0
    requires: ClassVar[str] = "n > f (and idx < n)"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n > f, and the
        trusted input ``idx`` among them."""
        return max(_own_f(self, f) + 1, self.idx + 1 if self.idx >= 0 else -self.idx)

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f
        check_input(x, f"MoNNA(f={f})", f + 1, f"n > f = {f}")
        n = x.shape[0]
        if not -n <= self.idx < n:
            raise ValueError(f"MoNNA: idx={self.idx} is out of range for n={n} inputs")
        d2 = sq_distances_to(x, x[self.idx])
        d2[self.idx] = 0.0
        return mean_of_rows(x, lowest(d2, n - f))
