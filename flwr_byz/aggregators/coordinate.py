"""Coordinate-wise rules: Mean, Median, TrimmedMean, Meamed
(docs/ALGORITHMS.md, Aggregators).

The sorting rules sort a chunk of columns at a time (``sorted_columns_reduce``): the same bits
as one sort of the whole input, with about 1/8 of it as extra memory instead of a sorted copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import (
    _own_f,
    check_f,
    check_finite,
    check_input,
    column_chunks,
    mean_closest_to_median,
    median_of_sorted,
    normalized_weights,
    sorted_columns_reduce,
    torch_sort_bytes,
)

__all__ = ["Meamed", "Mean", "Median", "TrimmedMean"]


@dataclass
class Mean:
    """Plain average ``(1/n) sum_i x_i``. Not robust (tolerates f = 0); the baseline."""

    f: int = 0
    NOT_ROBUST: ClassVar[bool] = True

    requires: ClassVar[str] = "n >= 1"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n >= 1."""
        return 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "Mean", finite=False)
        out = x.mean(dim=0)
        check_finite(x, out, "Mean")  # NaN/Inf reach the mean: one pass over x in all
        return out

    def weighted(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Weighted average ``sum_i w_i x_i / sum_i w_i`` (FedAvg's sample-count weighting)."""
        check_input(x, "Mean", finite=False)
        a = normalized_weights(w, x)
        out = a @ x
        check_finite(x, out, "Mean")
        return out


@dataclass
class Median:
    """Coordinate-wise median; for even n the mean of the two middle values (NumPy semantics).

    Tolerates f < n/2 (Yin et al. 2018). ``f`` is informational: the rule has no parameter.
    """

    f: int = 0

    requires: ClassVar[str] = "n >= 1"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n >= 1."""
        return 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "Median")
        return sorted_columns_reduce(x, median_of_sorted)

    def weighted(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Weighted coordinate-wise median.

        Per coordinate, with the values sorted and ``C_k`` the cumulative weight of the k
        smallest: the mean of the first value with ``C_k >= W/2`` and the first with
        ``C_k > W/2`` (``W`` the total). Equal weights give exactly the unweighted median.
        """
        check_input(x, "Median")
        a = normalized_weights(w, x, torch.float64)  # exact ties at W/2 need float64 sums
        n, d = x.shape
        out = torch.empty(d, dtype=x.dtype, device=x.device)
        # 2 * cum >= 1 - 1e-12 exactly when cum >= (1 - 1e-12) / 2 (halving is exact)
        lo_at, hi_at = (1.0 - 1e-12) / 2, (1.0 + 1e-12) / 2
        # per entry: torch.sort's, then the float64 weights in sorted order and their cumsum
        per_col = n * torch_sort_bytes(x, extra=16) + 8 * x.element_size()
        for cols in column_chunks(x, n, per_col):
            values, order = torch.sort(x[:, cols], dim=0, stable=True)
            cum = a[order]
            del order
            cum.cumsum_(dim=0)
            lo = torch.ge(cum, lo_at).to(torch.int8).argmax(dim=0, keepdim=True)
            hi = torch.gt(cum, hi_at).to(torch.int8).argmax(dim=0, keepdim=True)
            del cum
            pair = values.gather(0, lo) + values.gather(0, hi)
            out[cols] = (pair / 2).squeeze(0)
        return out


@dataclass
class TrimmedMean:
    """Coordinate-wise trimmed mean: drop the f smallest and f largest values, average the rest.

    Requires n > 2f (Yin et al. 2018).
    """

    f: int = 0

    requires: ClassVar[str] = "n > 2f"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n > 2f."""
        return 2 * _own_f(self, f) + 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f
        check_input(x, f"TrimmedMean(f={f})", 2 * f + 1, f"n > 2f = {2 * f}")
        if f == 0:
            return x.mean(dim=0)
        n = x.shape[0]
        return sorted_columns_reduce(x, lambda s: s[f : n - f].mean(dim=0))


@dataclass
class Meamed:
    """Mean around the median: per coordinate, the mean of the n - f values closest to the
    coordinate median (Xie et al. 2018, "Phocas"/"MeaMed"). Requires n > f.
    """

    f: int = 0

    requires: ClassVar[str] = "n > f"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n > f."""
        return _own_f(self, f) + 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f
        check_input(x, f"Meamed(f={f})", f + 1, f"n > f = {f}")
        k = x.shape[0] - f
        return sorted_columns_reduce(x, lambda s: mean_closest_to_median(s, k), extra_rows=8)
