"""Distance-based selection rules: Krum, MultiKrum (Blanchard et al. 2017), Bulyan (El Mhamdi
et al. 2018). All distances come from one Gram product (``pairwise_sq_distances``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import (
    _own_f,
    check_f,
    check_input,
    lowest,
    mean_closest_to_median,
    mean_of_rows,
    pairwise_sq_distances,
    smallest_sorted,
    sorted_columns_reduce,
)

__all__ = ["Bulyan", "Krum", "MultiKrum", "krum_scores"]


def krum_scores(d2: torch.Tensor, f: int, members: torch.Tensor | None = None) -> torch.Tensor:
    """Krum scores from squared distances ``d2`` ``[n, n]`` (Blanchard et al. 2017, Eq. 2).

    ``score(i)`` is the sum of the squared distances from ``x_i`` to its ``m - f - 2`` nearest
    other inputs (at least 1, as in Flower; at most the ``m - 1`` others), ``m`` the number of
    inputs considered. With a
    boolean ``members`` mask only those inputs count, and non-members score ``+inf``.
    """
    n = d2.shape[0]
    inf = torch.tensor(float("inf"), dtype=d2.dtype, device=d2.device)
    masked = d2.clone()
    masked.fill_diagonal_(float("inf"))
    m = n
    if members is not None:
        masked = torch.where(members[None, :] & members[:, None], masked, inf)
        m = int(members.sum())
    k = min(max(1, m - f - 2), m - 1)  # a lone remaining input scores 0
    scores = smallest_sorted(masked, k).sum(dim=1)
    if members is not None:
        scores = torch.where(members, scores, inf)
    return scores


@dataclass
class Krum:
    """Krum: the input with the smallest Krum score (Blanchard et al. 2017, Eq. 2-3).

    Requires n >= 2f + 3.
    """

    f: int = 0

    requires: ClassVar[str] = "n >= 2f + 3"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n >= 2f + 3."""
        return 2 * _own_f(self, f) + 3

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def select(self, x: torch.Tensor) -> int:
        """Index of the selected input."""
        f = self.f
        check_input(x, f"Krum(f={f})", 2 * f + 3, f"n >= 2f + 3 = {2 * f + 3}")
        return int(krum_scores(pairwise_sq_distances(x), f).argmin())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.select(x)].clone()


@dataclass
class MultiKrum:
    """MultiKrum: the average of the m inputs with the smallest Krum scores (default
    m = n - f; ties by index). Requires n >= 2f + 3 (Blanchard et al. 2017, Sec. 4).
    """

    f: int = 0
    m: int | None = None

    requires: ClassVar[str] = "n >= 2f + 3"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n >= 2f + 3."""
        return 2 * _own_f(self, f) + 3

    def __post_init__(self) -> None:
        self.f = check_f(self.f)
        if self.m is not None and self.m < 1:
            raise ValueError(f"MultiKrum needs m >= 1, got m={self.m}")

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Indices of the m selected inputs, best score first."""
        f = self.f
        check_input(x, f"MultiKrum(f={f})", 2 * f + 3, f"n >= 2f + 3 = {2 * f + 3}")
        n = x.shape[0]
        m = n - f if self.m is None else min(self.m, n)
        scores = krum_scores(pairwise_sq_distances(x), f)
        return lowest(scores, m)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return mean_of_rows(x, self.select(x))


@dataclass
class Bulyan:
    """Bulyan over Krum (El Mhamdi et al. 2018, Alg. 1). Requires n >= 4f + 3.

    Selection: theta = n - 2f times, Krum(f) on the inputs not yet selected picks one more
    (each time on the shrinking set, Krum's neighbour count ``max(1, |R| - f - 2)``).
    Aggregation: beta = theta - 2f; per coordinate, the mean of the beta selected values
    closest to the selected inputs' coordinate median (a chunk of coordinates at a time: the
    selected rows are never gathered whole).
    """

    f: int = 0

    requires: ClassVar[str] = "n >= 4f + 3"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n >= 4f + 3."""
        return 4 * _own_f(self, f) + 3

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Indices of the theta inputs chosen by the iterated Krum, in selection order."""
        f = self.f
        check_input(x, f"Bulyan(f={f})", 4 * f + 3, f"n >= 4f + 3 = {4 * f + 3}")
        n = x.shape[0]
        d2 = pairwise_sq_distances(x)
        remaining = torch.ones(n, dtype=torch.bool, device=x.device)
        chosen = []
        for _ in range(n - 2 * f):  # theta small Krum runs on an [n, n] matrix, never on x
            i = int(krum_scores(d2, f, remaining).argmin())
            chosen.append(i)
            remaining[i] = False
        return torch.tensor(chosen, device=x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        sel = self.select(x)
        beta = sel.numel() - 2 * self.f
        return sorted_columns_reduce(
            x, lambda s: mean_closest_to_median(s, beta), rows=sel, extra_rows=8
        )
