"""SignGuard (Xu, Huang, Song & Lan, ICDCS 2022, Alg. 1): a norm filter and a clustering of
the inputs' sign statistics, then a clipped mean."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .base import SCRATCH_FRACTION, check_f
from .normclip import clipped_mean, median_norm
from .preaggregators import checked_norms

__all__ = ["SignGuard", "largest_meanshift_cluster", "sign_features"]


def sign_features(block: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """The sign statistics of each row of ``block`` (``[n, k]``): the shares of its positive,
    zero and negative entries, each divided by its largest value over the rows (plus 1e-8),
    as the authors' code does (``[n, 3]``, float64). The counts come from ``sign`` sums over
    ``chunk`` columns at a time (all: None; at most 2^24, where float32 sums of +-1 are still
    exact), whose copy is the only scratch."""
    n, k = block.shape
    step = max(1, min(k if chunk is None else chunk, 1 << 24))
    net = torch.zeros(n, dtype=torch.float64, device=block.device)  # positive - negative
    nonzero = torch.zeros_like(net)
    for a in range(0, k, step):
        signs = torch.sign(block[:, a : a + step])
        net += signs.sum(dim=1).double()
        nonzero += signs.abs_().sum(dim=1).double()
    shares = torch.stack([(nonzero + net) / 2, k - nonzero, (nonzero - net) / 2], dim=1) / k
    return shares / (shares.max(dim=0).values + 1e-8)


def largest_meanshift_cluster(features: np.ndarray, quantile: float = 0.5) -> np.ndarray:
    """Boolean ``[n]`` mask of the largest cluster of scikit-learn's MeanShift on
    ``features`` (bandwidth ``estimate_bandwidth(features, quantile)``, bin seeding, orphans
    left unlabelled; ties: the smaller label). Every row when the bandwidth is 0 (fewer than
    4 rows, or rows too alike to separate) or no cluster forms."""
    n = features.shape[0]
    if n < 2:
        return np.ones(n, dtype=bool)
    from sklearn.cluster import MeanShift, estimate_bandwidth  # lazily (~2 s import)

    bandwidth = float(estimate_bandwidth(features, quantile=quantile))
    if not bandwidth > 0:
        return np.ones(n, dtype=bool)
    with warnings.catch_warnings():  # few distinct bins: it seeds from the points (logged)
        warnings.filterwarnings("ignore", "Binning data failed", UserWarning)
        fitted = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(features)
    found = fitted.labels_
    if not (found >= 0).any():
        return np.ones(n, dtype=bool)
    return np.asarray(found == np.bincount(found[found >= 0]).argmax())


@dataclass
class SignGuard:
    """SignGuard (Xu et al. 2022, Alg. 1), as the authors' code runs it:

    1. norm filter: ``S1`` = the inputs with ``lower < ||x_i|| / M < upper``, ``M`` the median
       input norm (defaults 0.1 and 3.0);
    2. sign clustering: on a random block of ``floor(fraction d)`` (at least 1) consecutive
       coordinates (its start drawn by ``torch.randint`` from a generator seeded with ``seed``,
       advancing each call; ``reset()`` reseeds), each input's shares of positive, zero and negative
       entries (:func:`sign_features`), clustered by MeanShift; ``S2`` = the largest cluster
       (:func:`largest_meanshift_cluster`);
    3. the output: the mean of the inputs of ``S1 & S2`` clipped to norm ``M`` (``S1`` when
       the intersection is empty; the zero vector when ``S1`` is, i.e. when ``M = 0``).

    ``f`` has no effect. Cost: two passes over ``x`` (the norms, one GEMV) plus the sign
    counts on the block.
    """

    lower: float = 0.1
    upper: float = 3.0
    fraction: float = 0.1
    seed: int = 0
    f: int = 0
    _gen: torch.Generator = field(init=False, repr=False)

    requires: ClassVar[str] = "n >= 1"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones: n >= 1."""
        return 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)
        if not 0 <= self.lower < 1 < self.upper:
            raise ValueError(
                "SignGuard needs norm-ratio bounds 0 <= lower < 1 < upper, got "
                f"lower={self.lower}, upper={self.upper}"
            )
        if not 0 < self.fraction <= 1:
            raise ValueError(
                f"SignGuard needs a coordinate fraction 0 < fraction <= 1, got {self.fraction}"
            )
        self.reset()

    def reset(self) -> None:
        """Restart the coordinate draws from ``seed``."""
        self._gen = torch.Generator().manual_seed(self.seed)

    def block(self, d: int) -> slice:
        """The next random block of coordinates (advances the generator)."""
        k = max(1, int(self.fraction * d))
        start = int(torch.randint(0, d - k + 1, (1,), generator=self._gen))
        return slice(start, start + k)

    def select(self, x: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean ``[n]`` mask of the inputs averaged (step 3's set)."""
        if norms is None:
            norms = checked_norms(x, "SignGuard")
        m = median_norm(norms)
        s1 = (norms > self.lower * m) & (norms < self.upper * m)
        chunk = max(1, x.shape[1] // SCRATCH_FRACTION)  # scratch: 1/8 of x at most
        features = sign_features(x[:, self.block(x.shape[1])], chunk).cpu().numpy()
        s2 = torch.from_numpy(largest_meanshift_cluster(features)).to(x.device)
        both = s1 & s2
        return both if bool(both.any()) else s1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        norms = checked_norms(x, "SignGuard")
        keep = self.select(x, norms)
        return clipped_mean(x, norms, median_norm(norms), keep)
