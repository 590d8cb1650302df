"""The typed attack surface of a method: where a Byzantine reply meets the server's update.

An omniscient attack (``flwr_byz.attacks``) forges the vectors the server *aggregates*, which
are not always the vectors on the wire: Byz-EF21-SGDM aggregates its copy ``g_i + c_i`` of a
client's compressed message ``c_i``; RobustFedAvg aggregates the update ``reply - x^k`` of a
returned model. A surface says, per method:

- ``aggregated(node, reply, compressed=...)``: the vector the server aggregates from ``node``'s
  reply vector (dense, decompressed; for a model reply, over the model's floating-point
  coordinates); ``compressed``: the reply came as a compressor's payload (Byz-EF21-SGDM adds
  those to its copy g_i, but takes a dense reply, a reset, as it is);
- ``to_wire(node, forged, compressed=...)``: the reply vector that makes the server aggregate
  ``forged`` (the inverse of ``aggregated``; a compressing shell then compresses it);
- ``shift_back_target(mult)``: the aggregated vector with which the round's update moves the
  model to ``x^k - mult (x^k - x^0)`` (ShiftBack, Malinovsky et al. 2024, Sec. 5; ``mult=None``
  is 1: exactly back to x^0).

Surfaces read the method's live state (through a callable), so one object serves every round.
Every method strategy returns its surface from ``attack_surface()``; ``ByzantineGrid``,
``byzantine_mod`` and ``ShiftBack`` use nothing else of the method. :func:`as_surface` checks an
object at the point where it is handed over, naming the methods it lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

import torch

__all__ = ["SURFACE_METHODS", "AttackSurface", "IdentitySurface", "OffsetSurface", "as_surface"]


@runtime_checkable
class AttackSurface(Protocol):
    """What an attack needs from a method (module doc)."""

    def aggregated(
        self, node: int, reply: torch.Tensor, *, compressed: bool = False
    ) -> torch.Tensor:
        """The vector the server aggregates from ``node``'s reply vector ``reply`` ``[d]``."""
        ...

    def to_wire(self, node: int, forged: torch.Tensor, *, compressed: bool = False) -> torch.Tensor:
        """The reply vector that makes the server aggregate ``forged`` ``[d]``."""
        ...

    def shift_back_target(self, mult: float | None) -> torch.Tensor:
        """The aggregated vector that sends the model back towards x^0 (module doc)."""
        ...


@dataclass(frozen=True)
class IdentitySurface:
    """The server aggregates the replies themselves (gradients, momenta, differences).

    ``target(mult)`` computes ShiftBack's vector from the method's current state."""

    target: Callable[[float | None], torch.Tensor]

    def aggregated(
        self, node: int, reply: torch.Tensor, *, compressed: bool = False
    ) -> torch.Tensor:
        """``reply``."""
        return reply

    def to_wire(self, node: int, forged: torch.Tensor, *, compressed: bool = False) -> torch.Tensor:
        """``forged``."""
        return forged

    def shift_back_target(self, mult: float | None) -> torch.Tensor:
        """``target(mult)``."""
        return self.target(mult)


@dataclass(frozen=True)
class OffsetSurface:
    """The server aggregates ``offset(node) + reply``: a per-node vector it adds each reply to
    (Byz-EF21-SGDM's copy g_i; RobustFedAvg's model sent, with ``sign=-1``: the update
    ``reply - x^k``). ``offset(node)`` None: no offset for that node (the reply itself is
    aggregated: no copy yet). ``compressed_only``: only compressed replies get the offset (EF21:
    a dense reply is a reset, aggregated as it is).

    ``aggregated(node, r) = r + sign * offset(node)``; ``to_wire(node, v) = v - sign *
    offset(node)``."""

    offset: Callable[[int], torch.Tensor | None]
    target: Callable[[float | None], torch.Tensor]
    sign: float = 1.0
    compressed_only: bool = False

    def _base(self, node: int, compressed: bool) -> torch.Tensor | None:
        return None if self.compressed_only and not compressed else self.offset(node)

    def aggregated(
        self, node: int, reply: torch.Tensor, *, compressed: bool = False
    ) -> torch.Tensor:
        """``reply + sign * offset(node)``."""
        base = self._base(node, compressed)
        return reply if base is None else reply + self.sign * base.to(reply.dtype)

    def to_wire(self, node: int, forged: torch.Tensor, *, compressed: bool = False) -> torch.Tensor:
        """``forged - sign * offset(node)``."""
        base = self._base(node, compressed)
        return forged if base is None else forged - self.sign * base.to(forged.dtype)

    def shift_back_target(self, mult: float | None) -> torch.Tensor:
        """``target(mult)``."""
        return self.target(mult)


#: The methods an :class:`AttackSurface` has.
SURFACE_METHODS = ("aggregated", "to_wire", "shift_back_target")


def as_surface(obj: object, what: str) -> AttackSurface:
    """``obj``, checked to be an :class:`AttackSurface`; ``TypeError`` naming the methods it
    lacks (``what`` says where it came from, e.g. ``"ShiftBack.bind's argument"``)."""
    missing = [name for name in SURFACE_METHODS if not callable(getattr(obj, name, None))]
    if missing:
        names = ", ".join(f"{name}()" for name in missing)
        raise TypeError(
            f"{what} must be an attack surface (flwr_byz.methods.surface.AttackSurface): "
            f"{type(obj).__name__} has no {names}"
        )
    return cast(AttackSurface, obj)
