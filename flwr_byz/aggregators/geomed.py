"""Geometric median by smoothed Weiszfeld iterations (RFA, Pillutla et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import check_f, check_input, gram, normalized_weights

__all__ = ["GeometricMedian"]


@dataclass
class GeometricMedian:
    """``argmin_z sum_i ||z - x_i||`` by smoothed Weiszfeld (RFA, Pillutla et al. 2022, Alg. 2).

    ``z <- sum_i w_i x_i / sum_i w_i`` with ``w_i = 1 / max(nu, ||z - x_i||)``, starting at the
    mean; stops once every distance ``||z - x_i||`` changed by at most ``eps`` relative to itself
    (floored at ``nu``), or after ``max_iter`` updates. Breakdown point 1/2 (tolerates f < n/2;
    ``f`` is informational).

    The stop is stricter than RFA's "relative change of the objective <= eps" (it implies it):
    a Byzantine input of norm R dominates the objective, so that rule stops while z is still
    ~ eps * R away from the honest inputs (at R = 1e9, eps = 1e-6: ~1e3 x their spread).

    Every iterate is a convex combination ``z = x^T a``, so the iterations run on the ``[n, n]``
    Gram matrix (``||z - x_i||^2 = G_ii - 2 (G a)_i + a^T G a``) in float64; ``x`` is read
    twice in total (the Gram product and the final ``a^T x``) whatever the iteration count.
    """

    nu: float = 1e-6
    eps: float = 1e-6
    max_iter: int = 100
    f: int = 0

    requires: ClassVar[str] = "n >= 1"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n >= 1."""
        return 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)
        if self.nu <= 0 or self.eps < 0 or self.max_iter < 0:
            raise ValueError("GeometricMedian needs nu > 0, eps >= 0 and max_iter >= 0")

    def weights(self, x: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """The convex weights ``a`` (float64, ``[n]``) of the geometric median ``z = a^T x``.

        ``alpha`` (``[n]``, normalised): per-input weights of the weighted geometric median
        ``argmin_z sum_i alpha_i ||z - x_i||`` (RFA, Pillutla et al. 2022, Eq. 4).
        """
        g = gram(x).double()
        n = g.shape[0]
        diag = g.diagonal()

        def dists(a: torch.Tensor) -> torch.Tensor:
            return (diag - 2.0 * (g @ a) + a @ g @ a).clamp_min(0.0).sqrt()

        if alpha is None:
            alpha = torch.full((n,), 1.0 / n, dtype=g.dtype, device=g.device)
        alpha = alpha.to(dtype=g.dtype, device=g.device)
        a = alpha
        dist = dists(a)
        for _ in range(self.max_iter):
            w = alpha / dist.clamp_min(self.nu)
            a = w / w.sum()
            new = dists(a)
            done = bool(((new - dist).abs() <= self.eps * new.clamp_min(self.nu)).all())
            dist = new
            if done:
                break
        return a

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "GeometricMedian")
        return self.weights(x).to(x.dtype) @ x

    def weighted(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Weighted geometric median ``argmin_z sum_i w_i ||z - x_i||`` (RFA's weighting)."""
        check_input(x, "GeometricMedian")
        return self.weights(x, normalized_weights(w, x, torch.float64)).to(x.dtype) @ x
