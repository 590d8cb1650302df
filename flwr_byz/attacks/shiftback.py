"""ShiftBack (Malinovsky et al. 2024, Byz-VR-MARINA-PP paper, Sec. 5 / App.): in a round where
the Byzantine nodes outnumber the honest ones among the sampled nodes, they all send the
vector that moves the global model back to the starting point x^0; otherwise they behave
honestly and send the honest mean (so they are indistinguishable from good nodes).

The vector depends on the protocol (a gradient, a gradient difference, a model update), so the
attack asks the strategy it targets: ``bind(strategy)`` with any object that has
``shift_back_vector(mult) -> Tensor [d]`` (every method strategy of flwr-byz has it). That
vector is ``(mult / lr) (x^k - x^0)`` as a gradient (the paper's reference code), so that the
step ``x^k - lr g`` lands on ``x^k - mult (x^k - x^0)``; ``mult=None`` means 1: exactly x^0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from .base import broadcast_rows, check_attack_input

__all__ = ["ShiftBack", "ShiftBackSource"]


class ShiftBackSource(Protocol):
    """What ShiftBack reads from the strategy it attacks."""

    def shift_back_vector(self, mult: float | None) -> torch.Tensor: ...


@dataclass
class ShiftBack:
    """Byzantine majority in the round (``b > h``): send ``source.shift_back_vector(mult)``;
    otherwise send the mean of the honest vectors. Omniscient (reads ``honest``), and an
    empty ``honest`` (only Byzantine nodes sampled) is a majority, not a missing input."""

    mult: float | None = None
    source: Any = field(default=None, repr=False, compare=False)
    omniscient: ClassVar[bool] = True
    counts_honest: ClassVar[bool] = True  # reads h itself: an empty ``honest`` is meaningful

    def bind(self, source: ShiftBackSource) -> ShiftBack:
        """Attack the strategy ``source``; returns ``self``."""
        if not callable(getattr(source, "shift_back_vector", None)):
            raise TypeError(f"{type(source).__name__} has no shift_back_vector(mult) method")
        self.source = source
        return self

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, "ShiftBack", omniscient=False)
        if own.shape[0] <= honest.shape[0]:  # no Byzantine majority: look honest
            return broadcast_rows(honest.mean(dim=0), own)
        if self.source is None:
            raise ValueError(
                "ShiftBack needs the strategy it attacks: call attack.bind(strategy) "
                "(the runner does this)"
            )
        target = self.source.shift_back_vector(self.mult)
        if target.shape != own.shape[1:]:
            raise ValueError(
                f"ShiftBack: the strategy's vector has shape {tuple(target.shape)}, "
                f"the replies have d={own.shape[1]}"
            )
        return broadcast_rows(target, own)
