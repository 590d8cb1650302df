"""The method strategies' update rules as pure functions over tensors (no Flower), in the
style of ``torch.optim``'s functional API: testable on their own, called by the strategies.
"""

from __future__ import annotations

import torch

from ..aggregators.preaggregators import clip_scales

__all__ = ["clip_rows", "momentum_update", "sgd_step"]


def clip_rows(x: torch.Tensor, level: float | None) -> tuple[torch.Tensor, int]:
    """``clip_l(x_i) = x_i min(1, l / ||x_i||)`` for every row of ``x`` ``[n, d]``, and how many
    rows were shortened. ``level=None`` leaves ``x`` as it is (no clipping).

    The server-side clipping of Byz-VR-MARINA-PP (Malinovsky et al. 2024, Alg. 1, line 11,
    rows ``Q(Delta_i)``) and of its Eq. (10) heuristic (rows ``v_i - g^{k-1}``).
    """
    if level is None:
        return x, 0
    norms = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)  # no float32 overflow
    scales = clip_scales(norms, float(level))
    return x * scales.to(x.dtype)[:, None], int((norms > level).sum())


def sgd_step(x: torch.Tensor, g: torch.Tensor, lr: float) -> torch.Tensor:
    """``x - lr g``."""
    return x - lr * g.to(x.dtype)


def momentum_update(m: torch.Tensor | None, grad: torch.Tensor, beta: float) -> torch.Tensor:
    """Worker (Polyak) momentum ``m = beta m + (1 - beta) grad``; the first call returns
    ``grad`` (Karimireddy et al. 2021, "Learning from history", Alg. 2)."""
    if m is None:
        return grad.clone()
    return beta * m + (1.0 - beta) * grad
