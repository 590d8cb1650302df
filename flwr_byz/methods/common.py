"""Building blocks shared by the methods: pure functions over tensors (no Flower), in the style
of ``torch.optim``'s functional API. Rows of ``[n, d]`` tensors are clients (or replies).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..aggregators.preaggregators import clip_scales

__all__ = [
    "Aggregate",
    "clip_rows",
    "guarded",
    "momentum_rows",
    "momentum_update",
    "sgd_step",
    "shift_back_gradient",
]

Aggregate = Callable[[torch.Tensor], torch.Tensor | None]
"""A robust rule applied to the stacked replies ``[m, d] -> [d]``, or None when it cannot run
on them (no reply, too few for its f, a non-finite output): the method then skips its step.
The Flower shells pass ``MethodStrategy.robust`` (which logs why); :func:`guarded` is the same
without logging."""


def guarded(rule: Callable[[torch.Tensor], torch.Tensor]) -> Aggregate:
    """``rule`` as an :data:`Aggregate`: None for no rows, a ``ValueError`` of the rule (too few
    rows for its f) or a non-finite output."""

    def aggregate(x: torch.Tensor) -> torch.Tensor | None:
        if x.shape[0] == 0:
            return None
        try:
            out = rule(x)
        except ValueError:
            return None
        return out if bool(torch.isfinite(out).all()) else None

    return aggregate


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


def momentum_rows(
    m: torch.Tensor, grads: torch.Tensor, started: torch.Tensor, beta: float
) -> torch.Tensor:
    """:func:`momentum_update` row-wise: ``beta m_i + (1 - beta) grad_i`` where ``started[i]``,
    else ``grad_i`` (a client's first step). ``m``, ``grads``: ``[n, d]``; ``started``: ``[n]``
    bool. Each row equals ``momentum_update`` of that row bit for bit."""
    if not bool(started.any()):
        return grads.clone()
    moved = m.mul(beta).add_(grads.mul(1.0 - beta))  # beta m + (1 - beta) g, fewer buffers
    return moved if bool(started.all()) else torch.where(started[:, None], moved, grads)


def shift_back_gradient(
    x: torch.Tensor, x0: torch.Tensor, lr: float, mult: float | None
) -> torch.Tensor:
    """ShiftBack's gradient for a plain step ``x - lr g``: ``(mult / lr)(x - x0)``, so the step
    lands on ``x - mult (x - x0)`` (``mult=None``: 1, exactly x^0; Malinovsky et al. 2024's
    reference code)."""
    scale = (1.0 if mult is None else float(mult)) / lr
    return scale * (x - x0)
