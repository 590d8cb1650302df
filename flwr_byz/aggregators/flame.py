"""FLAME (Nguyen et al., USENIX Security 2022, Alg. 1): cosine HDBSCAN clustering, adaptive
clipping, Gaussian noise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .base import check_f
from .normclip import clipped_mean, cosine_matrix, median_norm
from .preaggregators import checked_norms

__all__ = ["FLAME", "majority_cluster"]


def majority_cluster(dist: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """Boolean ``[n]`` mask of the largest cluster that scikit-learn's HDBSCAN finds in the
    precomputed distances ``dist`` (``min_samples=1``, a single cluster allowed, as FLAME
    sets it; cluster-size ties: the smaller label). Every input when HDBSCAN labels all of
    them noise, or when n < 2 (HDBSCAN needs two)."""
    n = dist.shape[0]
    if n < 2:
        return np.ones(n, dtype=bool)
    from sklearn.cluster import HDBSCAN  # lazily: importing scikit-learn costs ~2 s

    labels = (
        HDBSCAN(
            min_cluster_size=min(max(2, min_cluster_size), n),
            min_samples=1,
            metric="precomputed",
            allow_single_cluster=True,
            copy=True,
        )
        .fit(dist)
        .labels_
    )
    if not (labels >= 0).any():
        return np.ones(n, dtype=bool)
    return np.asarray(labels == np.bincount(labels[labels >= 0]).argmax())


@dataclass
class FLAME:
    """FLAME (Nguyen et al. 2022, Alg. 1) on the updates ``x_i``:

    1. cosine distances ``1 - cos(x_i, x_j)``, clustered by HDBSCAN (precomputed metric,
       ``min_cluster_size`` default n // 2 + 1, ``min_samples=1``, a single cluster allowed);
       the largest cluster is kept (all inputs if every one is noise);
    2. ``S`` = the median of ALL the input norms (the distances of the local models to the
       global one); the kept inputs are clipped to norm ``S`` and averaged;
    3. Gaussian noise ``N(0, (lam S)^2 I)`` is added (``lam``: the paper's 0.001 for image
       classification; 0 turns it off), drawn from a generator seeded with ``seed`` that
       advances each call (``reset()`` reseeds). The paper adds it to the new global model;
       we aggregate updates, so it is added to the aggregated update: the same model.

    The paper clusters the local models; a model's cosine differs from its update's by the
    common global model, so we cluster the updates (what the server aggregates). ``f`` has
    no effect. Cost: two passes over ``x`` (the Gram product, one GEMV) plus HDBSCAN on an
    ``[n, n]`` matrix.
    """

    lam: float = 0.001
    seed: int = 0
    min_cluster_size: int | None = None
    f: int = 0
    _gen: torch.Generator = field(init=False, repr=False)

    requires: ClassVar[str] = "n >= 1"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones: n >= 1."""
        return 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)
        if not (isinstance(self.lam, (int, float)) and 0 <= self.lam < float("inf")):
            raise ValueError(f"FLAME needs a noise level lam >= 0 (0: no noise), got {self.lam!r}")
        if self.min_cluster_size is not None and self.min_cluster_size < 2:
            raise ValueError(
                "FLAME needs min_cluster_size >= 2 (or None: n // 2 + 1), "
                f"got {self.min_cluster_size}"
            )
        self.reset()

    def reset(self) -> None:
        """Restart the noise sequence from ``seed``."""
        self._gen = torch.Generator().manual_seed(self.seed)

    def admitted(self, x: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean ``[n]`` mask of the inputs in the majority cluster (step 1)."""
        if norms is None:
            norms = checked_norms(x, "FLAME")
        n = x.shape[0]
        dist = (1.0 - cosine_matrix(x, norms)).clamp_(0.0, 2.0)
        dist.fill_diagonal_(0.0)
        size = n // 2 + 1 if self.min_cluster_size is None else self.min_cluster_size
        keep = majority_cluster(dist.cpu().numpy(), size)
        return torch.from_numpy(keep).to(x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        norms = checked_norms(x, "FLAME")
        s = median_norm(norms)
        out = clipped_mean(x, norms, s, self.admitted(x, norms))
        if self.lam > 0:
            noise = torch.randn(x.shape[1], generator=self._gen, dtype=x.dtype)
            out = out + noise.to(out.device) * (self.lam * s)
        return out
