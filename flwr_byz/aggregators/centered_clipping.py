"""Centered clipping (Karimireddy, He & Jaggi 2021, Eq. 3): a stateful rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import check_f, check_input

__all__ = ["CenteredClipping"]


@dataclass
class CenteredClipping:
    """``v <- v + (1/n) sum_i clip_tau(x_i - v)``, ``iters`` times, ``clip_tau(y) = y min(1,
    tau/||y||)`` (Karimireddy et al. 2021, Eq. 3). ``v`` starts at the previous call's output
    (zero on the first call, after ``reset()``, or when the input width changes).

    ``||x_i - v||`` comes from ``||x_i||^2 - 2<x_i, v> + ||v||^2`` and the update from one
    weighted row sum, so ``x - v`` is never materialised: 3 passes over ``x`` per iteration.
    """

    tau: float = 100.0
    iters: int = 1
    f: int = 0
    _v: torch.Tensor | None = field(default=None, init=False, repr=False)

    requires: ClassVar[str] = "n >= 1"

    def min_inputs(self, f: int | None = None) -> int:
        """The fewest inputs for ``f`` Byzantine ones (None: ``self.f``): n >= 1."""
        return 1

    def __post_init__(self) -> None:
        self.f = check_f(self.f)
        if self.tau <= 0 or self.iters < 1:
            raise ValueError("CenteredClipping needs tau > 0 and iters >= 1")

    def reset(self) -> None:
        """Forget the centre: the next call starts from zero."""
        self._v = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "CenteredClipping")
        n, d = x.shape
        v = self._v
        if v is not None and v.device != x.device:  # e.g. restored from a checkpoint (CPU)
            v = v.to(x.device)
        if v is None or v.shape != (d,) or v.dtype != x.dtype:
            v = torch.zeros(d, dtype=x.dtype, device=x.device)
        x_sq = torch.linalg.vector_norm(x, dim=1).square()
        for _ in range(self.iters):
            dist = (x_sq - 2.0 * (x @ v) + v @ v).clamp_min(0.0).sqrt()
            scale = (self.tau / dist.clamp_min(torch.finfo(x.dtype).tiny)).clamp(max=1.0)
            v = v + (scale @ x - scale.sum() * v) / n
        self._v = v
        return v.clone()
