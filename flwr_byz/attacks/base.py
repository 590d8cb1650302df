"""Shared mechanics of the attacks: the protocol, input checks, honest statistics.

Pure torch (no Flower import). An attack maps the round's honest vectors ``honest`` ``[h, d]``
and the Byzantine nodes' own honest vectors ``own`` ``[b, d]`` to the ``[b, d]`` vectors they
send instead, with ``own``'s dtype and device. An attack that needs more of the method than
these vectors (ShiftBack: its x^0 target) is a :class:`SurfaceAttack`, bound to the method's
attack surface (``flwr_byz.methods.surface``) before use.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from ..methods.surface import AttackSurface

__all__ = ["Attack", "SurfaceAttack", "broadcast_rows", "check_attack_input", "honest_stats"]


@runtime_checkable
class Attack(Protocol):
    """A model-poisoning attack: ``(honest [h, d], own [b, d]) -> [b, d]``.

    ``omniscient`` is True when the attack reads ``honest`` (it then needs ``h >= 1``; a
    caller with no honest vector substitutes ``own``); per-node attacks read ``own`` only and
    accept an empty ``honest`` ``[0, d]``.
    """

    omniscient: ClassVar[bool]

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class SurfaceAttack(Protocol):
    """An attack that reads the attack surface of the method it targets (ShiftBack):
    ``bind(surface)`` before the first call (``ByzantineGrid.bind(strategy)`` does it)."""

    def bind(self, surface: AttackSurface) -> Any: ...


def _check_matrix(x: torch.Tensor, what: str, rule: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{rule}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{rule}: {what} must be a 2-D tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{rule}: {what} must be a floating-point tensor, got {x.dtype}")


def check_attack_input(
    honest: torch.Tensor, own: torch.Tensor, rule: str, omniscient: bool
) -> None:
    """Raise ``ValueError`` unless ``honest`` ``[h, d]`` and ``own`` ``[b, d]`` are 2-D float
    tensors with the same ``d`` and, for an omniscient attack, ``h >= 1``."""
    _check_matrix(honest, "honest", rule)
    _check_matrix(own, "own", rule)
    if honest.shape[1] != own.shape[1]:
        raise ValueError(
            f"{rule}: honest {tuple(honest.shape)} and own {tuple(own.shape)} differ in d"
        )
    if omniscient and honest.shape[0] == 0:
        raise ValueError(
            f"{rule} is omniscient and needs at least one honest vector (h >= 1), got h=0; "
            "pass the Byzantine nodes' own vectors as honest instead"
        )


def honest_stats(honest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise mean ``mu`` and standard deviation ``sigma`` of ``honest`` ``[h, d]``.

    ``sigma`` is the sample std (correction 1, as ``numpy.std(ddof=1)``) for ``h >= 2`` and 0
    for ``h == 1`` (correction 0: a single vector has no spread, rather than NaN).
    """
    sigma, mu = torch.std_mean(honest, dim=0, correction=1 if honest.shape[0] >= 2 else 0)
    return mu, sigma


def broadcast_rows(v: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """``v`` ``[d]`` repeated as ``own.shape[0]`` rows, with ``own``'s dtype and device."""
    return v.to(dtype=own.dtype, device=own.device).expand(own.shape[0], -1).clone()
