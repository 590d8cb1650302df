"""Byzantine parameter servers (ByzSGD, El-Mhamdi et al. PODC 2020;
docs/ALGORITHMS.md, Server attacks).

A Byzantine server replica runs the honest algorithm internally (so its state stays plausible)
and corrupts what it *sends*: to each worker in the scatter phase and to each honest server in
the gather phase. A server attack is a callable

    attack(own [d], x0 [d], recipient, step) -> [d] model, or None (nothing is sent)

where ``recipient`` identifies who receives the model (a worker's node ID, ``-(s + 1)`` for
server replica s, 0 for an observer), so an attack can equivocate. ``get_server_attack`` parses
spec strings like ``"perturb:scale=2"`` (``flwr_byz.specs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..specs import build, split_part

__all__ = [
    "SERVER_ATTACKS",
    "HonestServer",
    "Negate",
    "NonFiniteModel",
    "Perturb",
    "RandomModels",
    "ServerAttack",
    "Stale",
    "Stall",
    "get_server_attack",
]


class ServerAttack(Protocol):
    """What a Byzantine replica sends to ``recipient`` at ``step`` (None: nothing)."""

    def __call__(
        self, own: torch.Tensor, x0: torch.Tensor, recipient: int, step: int
    ) -> torch.Tensor | None: ...


def _noise(like: torch.Tensor, seed: int, step: int, recipient: int, norm: float) -> torch.Tensor:
    """A Gaussian vector of Euclidean norm about ``norm``, seeded by (seed, step, recipient)."""
    mask = (1 << 64) - 1  # negative recipients (server replicas) map to distinct words
    words = [int(seed) & mask, int(step) & mask, int(recipient) & mask]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    z = torch.randn(like.shape, generator=g, dtype=torch.float64)
    return (z * (norm / max(like.numel(), 1) ** 0.5)).to(like.dtype)


@dataclass
class HonestServer:
    """No attack: the replica sends its own model (``f_servers`` then only lowers quorums)."""

    def __call__(
        self, own: torch.Tensor, x0: torch.Tensor, recipient: int, step: int
    ) -> torch.Tensor | None:
        return own.clone()


@dataclass
class Perturb:
    """Its model plus a large Gaussian perturbation of norm ``scale * ||own||`` (the same for
    every recipient of a step)."""

    scale: float = 1.0
    seed: int = 0

    def __call__(
        self, own: torch.Tensor, x0: torch.Tensor, recipient: int, step: int
    ) -> torch.Tensor | None:
        norm = self.scale * max(float(own.norm()), 1.0)
        return own + _noise(own, self.seed, step, 0, norm)


@dataclass
class Negate:
    """The negated model ``-own``."""

    def __call__(
        self, own: torch.Tensor, x0: torch.Tensor, recipient: int, step: int
    ) -> torch.Tensor | None:
        return -own


@dataclass
class RandomModels:
    """A different random model to each recipient: Gaussian, of norm ``scale * ||own||``."""

    scale: float = 1.0
    seed: int = 0

    def __call__(
        self, own: torch.Tensor, x0: torch.Tensor, recipient: int, step: int
    ) -> torch.Tensor | None:
        norm = self.scale * max(float(own.norm()), 1.0)
        return _noise(own, self.seed, step, recipient, norm)


@dataclass
class Stale:
    """A stale model: the initial model x^0, forever (a replica that stopped training)."""

    def __call__(
        self, own: torch.Tensor, x0: torch.Tensor, recipient: int, step: int
    ) -> torch.Tensor | None:
        return x0.clone()


@dataclass
class Stall:
    """Sends nothing: workers and servers go on with the models of the others."""

    def __call__(
        self, own: torch.Tensor, x0: torch.Tensor, recipient: int, step: int
    ) -> torch.Tensor | None:
        return None


@dataclass
class NonFiniteModel:
    """A model full of NaN (receivers must drop it)."""

    def __call__(
        self, own: torch.Tensor, x0: torch.Tensor, recipient: int, step: int
    ) -> torch.Tensor | None:
        return torch.full_like(own, float("nan"))


SERVER_ATTACKS: dict[str, type] = {
    "none": HonestServer,
    "perturb": Perturb,
    "negate": Negate,
    "random": RandomModels,
    "stale": Stale,
    "stall": Stall,
    "non-finite": NonFiniteModel,
}
"""Server attacks by name (docs/ALGORITHMS.md, Server attacks: large perturbation, negated
model, a different random model to each worker, stale model; plus stalling and NaN models)."""


def get_server_attack(spec: str | ServerAttack, seed: int = 0) -> ServerAttack:
    """The server attack of ``spec`` (a name from ``SERVER_ATTACKS`` with options, e.g.
    ``"random:scale=2"``), or ``spec`` itself when it is already a callable."""
    if not isinstance(spec, str):
        if not callable(spec):
            raise TypeError(f"server_attack must be a spec string or a callable, got {spec!r}")
        return spec
    name, args = split_part(spec.strip())
    key = name.lower().replace("_", "-")
    if key not in SERVER_ATTACKS:
        raise ValueError(
            f"unknown server attack {name!r} in {spec!r}; known: {sorted(SERVER_ATTACKS)}"
        )
    attack: ServerAttack = build(
        SERVER_ATTACKS[key], args, spec.strip(), "server attack", {"seed": seed}
    )
    return attack
