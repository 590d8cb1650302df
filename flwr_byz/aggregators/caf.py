"""CAF, the covariance-bound agnostic filter (Allouah et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import _own_f, check_f, check_input, gram

__all__ = ["CAF"]


@dataclass
class CAF:
    """Covariance-bound Agnostic Filter (Allouah et al. 2024, Alg. 2). Requires n > 2f.

    Weights ``c_i = 1``; while ``sum c > n - 2f``: weighted mean ``mu_c``, top eigenpair
    ``(v, lambda)`` of the weighted covariance ``sum_i c_i (x_i - mu_c)(x_i - mu_c)^T / sum c``,
    ``tau_i = <x_i - mu_c, v>^2``, ``c_i <- c_i (1 - tau_i / max_j tau_j)``. Returns the
    ``mu_c`` of the iteration with the smallest ``lambda``. ``max_j tau_j`` is taken over the
    inputs still weighted (``c_j > 0``), as in the filter the paper builds on: over all j (as
    ByzFL reads it) an input already removed can keep the maximum, and the
    loop then shrinks the others by ~1e-13 per round, never ending for one far outlier. Every
    round zeroes at least one weight, so there are at most n rounds.

    The covariance is never formed: its non-zero spectrum is that of the ``[n, n]`` matrix
    ``W^1/2 Gc W^1/2`` (``Gc`` the ``mu_c``-centred Gram matrix, ``W = diag(c)/sum c``), whose
    top eigenpair is computed exactly (``eigh``; ByzFL runs one power iteration from a random
    start); ``tau`` follows as ``((Gc W^1/2 u)_i)^2 / lambda``. ``x`` is read twice in all.
    The ``[n, n]`` filter runs on the CPU whatever ``x``'s device (one copy each way).
    """

    f: int = 0

    requires: ClassVar[str] = "n > 2f"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n > 2f."""
        return 2 * _own_f(self, f) + 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Convex weights ``w`` (float64, ``[n]``, on ``x``'s device) with ``output = w^T x``."""
        f = self.f
        check_input(x, f"CAF(f={f})", 2 * f + 1, f"n > 2f = {2 * f}")
        n = x.shape[0]
        # The [n, n] filter runs on the CPU wherever x is: on a GPU, eigh of a tiny matrix and
        # the per-round host syncs cost more than the Gram product. One copy there, [n] back.
        g = gram(x).double().cpu()
        c = torch.ones(n, dtype=g.dtype)
        best_w, best_lam = c / n, float("inf")
        while float(c.sum()) > n - 2 * f:
            w = c / c.sum()
            gw = g @ w
            gc = g - gw[:, None] - gw[None, :] + w @ gw  # <x_i - mu, x_j - mu>
            sw = w.sqrt()
            evals, evecs = torch.linalg.eigh(sw[:, None] * gc * sw[None, :])
            lam, u = float(evals[-1]), evecs[:, -1]
            if lam < best_lam:
                best_w, best_lam = w, lam
            tau = (gc @ (sw * u)).square()
            tmax = tau[c > 0].max()
            if not tmax > 0:  # all weighted inputs coincide: nothing left to filter
                break
            c = (c * (1.0 - tau / tmax)).clamp_min(0.0)
        return best_w.to(x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights(x).to(x.dtype) @ x
