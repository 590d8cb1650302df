"""CTMA, the Centered Trimmed Meta-Aggregator (Dahan & Levy 2024, Alg. 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import (
    Aggregator,
    KeepsAllButF,
    check_f,
    check_input,
    lowest,
    mean_of_rows,
    sq_distances_to,
)
from .coordinate import Median

__all__ = ["CTMA"]


@dataclass
class CTMA(KeepsAllButF):
    """Centered Trimmed Meta-Aggregator (Dahan & Levy 2024, Alg. 1).

    Anchor ``a = base(x)``; keep the m - f inputs closest to ``a`` (stable sort of
    ``||x_i - a||``, ties by index) and return their mean. Costs one ``base`` call plus
    O(dm + m log m). Requires n > f and what ``base`` needs. ``CTMA(f, NNM(f, base))`` is
    the paper's NNM+CTMA (anchor from the mixed vectors, trimming over the raw inputs).
    """

    f: int = 0
    base: Aggregator = field(default_factory=Median)

    def __post_init__(self) -> None:
        self.f = check_f(self.f)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f
        check_input(x, f"CTMA(f={f})", f + 1, f"n > f = {f}")
        anchor = self.base(x)
        return mean_of_rows(x, lowest(sq_distances_to(x, anchor), x.shape[0] - f))
