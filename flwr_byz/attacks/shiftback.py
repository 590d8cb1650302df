"""ShiftBack (Malinovsky et al. 2024, Byz-VR-MARINA-PP paper, Sec. 5 / App.): in a round where
the Byzantine nodes outnumber the honest ones among the sampled nodes, they all send the
vector that moves the global model back to the starting point x^0; otherwise they behave
honestly and send the honest mean (so they are indistinguishable from good nodes).

The vector depends on the method (a gradient, a gradient difference, a model update), so the
attack reads the attack surface of the method it targets (``flwr_byz.methods.surface``):
``bind(strategy.attack_surface())`` (``ByzantineGrid.bind(strategy)`` does it), then a majority
sends ``surface.shift_back_target(mult)``, the aggregated vector with which the round's update
lands on ``x^k - mult (x^k - x^0)``; ``mult=None`` means 1: exactly x^0. Like every attack it
forges aggregated vectors; the caller puts them on the wire (``surface.to_wire``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..methods.surface import AttackSurface, as_surface
from .base import broadcast_rows, check_attack_input

__all__ = ["ShiftBack"]


@dataclass
class ShiftBack:
    """Byzantine majority in the round (``b > h``): send ``surface.shift_back_target(mult)``;
    otherwise send the mean of the honest vectors. Omniscient (reads ``honest``), and an
    empty ``honest`` (only Byzantine nodes sampled) is a majority, not a missing input."""

    mult: float | None = None
    surface: AttackSurface | None = field(default=None, repr=False, compare=False)
    omniscient: ClassVar[bool] = True
    counts_honest: ClassVar[bool] = True  # reads h itself: an empty ``honest`` is meaningful

    def bind(self, surface: AttackSurface) -> ShiftBack:
        """Attack the method whose attack surface is ``surface`` (``TypeError`` naming what it
        lacks when it is not one, e.g. a strategy instead of its ``attack_surface()``);
        returns ``self``."""
        self.surface = as_surface(surface, "ShiftBack.bind's argument")
        return self

    def __getstate__(self) -> dict[str, Any]:
        """The options only: the surface reads the live state of the strategy it was bound to,
        which is saved on its own and bound again when a run resumes."""
        return {"mult": self.mult, "surface": None}

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, "ShiftBack", omniscient=False)
        if own.shape[0] <= honest.shape[0]:  # no Byzantine majority: look honest
            return broadcast_rows(honest.mean(dim=0), own)
        if self.surface is None:
            raise ValueError(
                "ShiftBack needs the attack surface of the method it attacks: call "
                "attack.bind(strategy.attack_surface()) (ByzantineGrid.bind(strategy) does this)"
            )
        target = self.surface.shift_back_target(self.mult)
        if target.shape != own.shape[1:]:
            raise ValueError(
                f"ShiftBack: the surface's target has shape {tuple(target.shape)}, "
                f"the replies have d={own.shape[1]}"
            )
        return broadcast_rows(target, own)
