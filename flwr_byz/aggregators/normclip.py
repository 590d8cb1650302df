"""Norm bounding (Sun et al. 2019) and the helpers the backdoor defences share.

``NormClip`` clips every input to a norm bound and averages. The helpers (the median input
norm, cosine similarities from one Gram product, a clipped mean of chosen rows as one GEMV)
are used by FLAME, FoolsGold and SignGuard too (docs/ALGORITHMS.md, Backdoor defences).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import check_f, gram, median_of_sorted
from .preaggregators import checked_norms, clip_scales

__all__ = ["NormClip", "clipped_mean", "cosine_matrix", "median_norm"]


def median_norm(norms: torch.Tensor) -> torch.Tensor:
    """The median of the input norms ``[n]`` (even n: the mean of the two middle ones)."""
    return median_of_sorted(torch.sort(norms).values[:, None])[0]


def cosine_matrix(x: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise cosine similarities ``<x_i, x_j> / (||x_i|| ||x_j||)`` (``[n, n]``, float64)
    from one Gram product, clamped to [-1, 1], exactly symmetric with a unit diagonal; a zero
    row has similarity 0 to every other row."""
    g = gram(x).double()
    nrm = g.diagonal().clamp_min(0.0).sqrt() if norms is None else norms.double()
    cos = g / (nrm[:, None] * nrm[None, :]).clamp_min(torch.finfo(torch.float64).tiny)
    cos = (0.5 * (cos + cos.T)).clamp_(-1.0, 1.0)
    cos.fill_diagonal_(1.0)
    return cos


def clipped_mean(
    x: torch.Tensor, norms: torch.Tensor, bound: torch.Tensor | float, keep: torch.Tensor
) -> torch.Tensor:
    """``(1/|K|) sum_{i in K} clip_bound(x_i)`` for the boolean mask ``keep`` (``K``), as one
    GEMV: the clipped copies are never made."""
    w = clip_scales(norms, bound) * keep.to(norms.dtype) / keep.sum().clamp_min(1)
    return w.to(device=x.device, dtype=x.dtype) @ x


@dataclass
class NormClip:
    """Norm bounding (Sun et al. 2019, "Can you really backdoor federated learning?", Sec. 3):
    ``(1/n) sum_i x_i min(1, M / ||x_i||)``. ``norm`` is M; None (default) takes the median
    of the input norms, so the bound adapts to the round. ``f`` has no effect. Two passes
    over ``x`` (the norms, one GEMV).
    """

    norm: float | None = None
    f: int = 0

    requires: ClassVar[str] = "n >= 1"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones: n >= 1."""
        return 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)
        ok = isinstance(self.norm, (int, float)) and not isinstance(self.norm, bool)
        if self.norm is not None and not (ok and 0 < self.norm < float("inf")):
            raise ValueError(
                f"NormClip needs a norm bound 0 < norm < inf (or None: the median input "
                f"norm), got norm={self.norm!r}"
            )

    def bound(self, norms: torch.Tensor) -> torch.Tensor | float:
        """The clipping bound M for inputs of these norms."""
        return median_norm(norms) if self.norm is None else float(self.norm)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        norms = checked_norms(x, "NormClip")
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return clipped_mean(x, norms, self.bound(norms), keep)
