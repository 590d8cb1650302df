"""Subset rules: MDA (El-Mhamdi et al. 2020) and SMEA (Allouah et al. 2024).

Both pick a subset of n - f inputs by a combinatorial criterion on the ``[n, n]`` Gram matrix
and return its mean; neither ever touches ``x`` beyond one Gram product and one weighted sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations, islice
from typing import ClassVar

import torch

from .base import _own_f, check_f, check_input, gram, mean_of_rows, pairwise_sq_distances

__all__ = ["MDA", "SMEA", "min_diameter_subset"]

MDA_MAX_F = 24
"""MDA refuses f above this: the exact search is bounded by about 2^f branches per probe."""


class _SearchBudgetExceeded(Exception):
    pass


def _vertex_cover(adj: list[int], alive: int, budget: int, counter: list[int]) -> bool:
    """Can deleting at most ``budget`` vertices of ``alive`` leave no edge? (bitmask graph)

    Max-degree branching: a vertex of degree > budget must go; otherwise either it goes or
    all its neighbours do. Edge-count bound: more than ``budget * maxdeg`` edges is hopeless.
    """
    counter[0] -= 1
    if counter[0] < 0:
        raise _SearchBudgetExceeded
    best, best_deg, twice_edges = -1, 0, 0
    rest = alive
    while rest:
        low = rest & -rest
        v = low.bit_length() - 1
        rest ^= low
        deg = (adj[v] & alive).bit_count()
        twice_edges += deg
        if deg > best_deg:
            best, best_deg = v, deg
    if best_deg == 0:
        return True
    if budget == 0 or twice_edges > 2 * budget * best_deg:
        return False
    without = alive & ~(1 << best)
    if _vertex_cover(adj, without, budget - 1, counter):
        return True
    if best_deg > budget:
        return False
    nbrs = adj[best] & alive
    return _vertex_cover(adj, without & ~nbrs, budget - nbrs.bit_count(), counter)


def min_diameter_subset(d2: torch.Tensor, f: int, max_nodes: int = 2_000_000) -> list[int]:
    """Exact minimum-diameter subset of size n - f (ties: lexicographically smallest indices).

    A set S has diameter <= delta iff its complement is a vertex cover of the "far" graph
    (edges i~j with D_ij > delta). Binary search over the distinct distances finds the
    smallest feasible delta with an exact bounded vertex-cover search (FPT in f, never
    enumerating the C(n, f) subsets); a greedy pass then keeps the smallest index that keeps
    the problem feasible, which yields the lexicographically smallest optimal S.
    Raises ``ValueError`` if the search exceeds ``max_nodes`` branch nodes.
    """
    n = d2.shape[0]
    if f == 0:
        return list(range(n))
    dm = d2.double().cpu()
    iu = torch.triu_indices(n, n, 1)
    levels = torch.unique(dm[iu[0], iu[1]])  # sorted candidate diameters^2
    counter = [max_nodes]
    full = (1 << n) - 1

    def far_graph(delta: float) -> list[int]:
        rows = (dm > delta).tolist()
        return [sum(1 << j for j, far in enumerate(row) if far) for row in rows]

    try:
        lo, hi = 0, len(levels) - 1  # levels[hi] is always feasible (no far pair)
        while lo < hi:
            mid = (lo + hi) // 2
            if _vertex_cover(far_graph(float(levels[mid])), full, f, counter):
                hi = mid
            else:
                lo = mid + 1
        adj = far_graph(float(levels[lo]))
        keep, removed = 0, 0
        for i in range(n):
            if keep.bit_count() == n - f:
                break
            if (removed >> i) & 1 or adj[i] & keep:
                removed |= 1 << i
                continue
            trial = removed | adj[i]
            budget = f - trial.bit_count()
            if budget >= 0 and _vertex_cover(adj, full & ~trial, budget, counter):
                keep |= 1 << i
                removed = trial
            else:
                removed |= 1 << i
    except _SearchBudgetExceeded:
        raise ValueError(
            f"MDA(f={f}): the exact minimum-diameter search over n={n} inputs exceeded "
            f"{max_nodes} branch nodes; lower f, raise max_nodes, or use Krum/NNM instead"
        ) from None
    return [i for i in range(n) if (keep >> i) & 1]


@dataclass
class MDA:
    """Minimum-Diameter Averaging (El-Mhamdi et al. 2020, Eq. 2): the mean of the n - f inputs
    whose diameter ``max_{i,j in S} ||x_i - x_j||`` is smallest (ties: lexicographically
    smallest sorted index tuple). Requires n >= 2f + 1.

    Exact, by a bounded vertex-cover search rather than enumerating C(n, f) subsets (ByzFL's
    approach); refuses f > ``MDA_MAX_F`` = 24 or a search beyond ``max_nodes`` branch nodes.
    """

    f: int = 0
    max_nodes: int = 2_000_000
    requires: ClassVar[str] = "n >= 2f + 1"
    F_LIMIT: ClassVar[int] = MDA_MAX_F

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n >= 2f + 1."""
        return 2 * _own_f(self, f) + 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)
        if self.f > MDA_MAX_F:
            raise ValueError(f"MDA supports f <= {MDA_MAX_F} (exact search ~2^f), got f={self.f}")

    def select(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f
        check_input(x, f"MDA(f={f})", 2 * f + 1, f"n >= 2f + 1 = {2 * f + 1}")
        idx = min_diameter_subset(pairwise_sq_distances(x), f, self.max_nodes)
        return torch.tensor(idx, device=x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return mean_of_rows(x, self.select(x))


SMEA_MAX_SUBSETS = 1_000_000
"""Default limit on C(n, f) for SMEA's exhaustive search."""


@dataclass
class SMEA:
    """Smallest Maximum Eigenvalue Averaging (Allouah et al. 2024): the mean of the subset S of
    n - f inputs whose empirical covariance has the smallest top eigenvalue. Requires n > f.

    Exhaustive like the definition, but each candidate costs an eigenvalue of a small
    ``[n-f, n-f]`` centred Gram block (batched ``eigvalsh``), never a ``d x d`` covariance.
    Refuses when C(n, f) > ``max_subsets`` (default 1,000,000: about 10 s at n - f = 16).
    """

    f: int = 0
    max_subsets: int = SMEA_MAX_SUBSETS
    chunk: int = 4096
    requires: ClassVar[str] = "n > f and C(n, f) <= max_subsets"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n > f."""
        return _own_f(self, f) + 1

    def max_inputs(self, f: int | None = None) -> int | None:
        """The most inputs for ``f``: the largest n with C(n, f) <= ``max_subsets`` (None
        for f = 0: a single subset)."""
        f = _own_f(self, f)
        if f == 0:
            return None
        lo, hi = f, f + 1  # C(f, f) = 1 fits; C(n, f) grows with n >= f
        while math.comb(hi, f) <= self.max_subsets:
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if math.comb(mid, f) <= self.max_subsets else (lo, mid)
        return lo

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f
        check_input(x, f"SMEA(f={f})", f + 1, f"n > f = {f}")
        n = x.shape[0]
        total = math.comb(n, f)
        if total > self.max_subsets:
            raise ValueError(
                f"SMEA(f={f}) would examine C({n}, {f}) = {total:,} subsets, above "
                f"max_subsets={self.max_subsets:,}; lower f or raise max_subsets"
            )
        if f == 0:
            return torch.arange(n, device=x.device)
        g = gram(x).double().cpu()
        k = n - f
        center = torch.eye(k, dtype=g.dtype) - 1.0 / k
        best_val, best_idx = float("inf"), None
        subsets = combinations(range(n), k)
        while True:
            batch = torch.tensor(list(islice(subsets, self.chunk)), dtype=torch.long)
            if batch.numel() == 0:
                break
            blocks = g[batch[:, :, None], batch[:, None, :]]
            top = torch.linalg.eigvalsh(center @ blocks @ center)[:, -1]
            j = int(top.argmin())  # first minimum: lexicographic order of the enumeration
            if float(top[j]) < best_val:
                best_val, best_idx = float(top[j]), batch[j]
        assert best_idx is not None
        return best_idx.to(x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return mean_of_rows(x, self.select(x))
