"""Per-node attacks: each Byzantine node transforms its own vector (``honest`` is ignored and
may be empty ``[0, d]``). docs/ALGORITHMS.md, Per-node attacks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import check_attack_input

__all__ = ["BitFlip", "Gaussian", "NoAttack", "NonFinite", "Scale", "SignFlip"]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@dataclass
class NoAttack:
    """No attack: the Byzantine nodes send ``own`` unchanged (a copy)."""

    omniscient: ClassVar[bool] = False

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, "NoAttack", self.omniscient)
        return own.clone()


@dataclass
class SignFlip:
    """Sign flipping: ``-scale * own_j`` (Allen-Zhu et al. 2021; Karimireddy et al. 2022)."""

    scale: float = 1.0
    omniscient: ClassVar[bool] = False

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, type(self).__name__, self.omniscient)
        return own * (-float(self.scale))


@dataclass
class BitFlip(SignFlip):
    """Bit flipping: ``-own_j``, the attack of the Byz-VR-MARINA papers (Gorbunov et al. 2023;
    Malinovsky et al. 2024); an alias of ``SignFlip(scale=1)``, whose ``scale`` is fixed."""

    scale: float = field(default=1.0, init=False)


@dataclass
class Scale:
    """Scaling: ``s * own_j`` (a boosted update, as in Bagdasaryan et al. 2020's model
    replacement); default ``s = 10``."""

    s: float = 10.0
    omniscient: ClassVar[bool] = False

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, "Scale", self.omniscient)
        return own * float(self.s)


@dataclass
class Gaussian:
    """Gaussian noise: every Byzantine vector ~ ``N(0, sigma^2 I)``, drawn fresh per node and
    call from a CPU ``torch.Generator`` seeded once with ``seed`` (the same seed gives the same
    sequence of calls; ``reset()`` restarts it). Ignores ``own`` except for shape, dtype and
    device (Blanchard et al. 2017's Gaussian Byzantine workers)."""

    sigma: float = 1.0
    seed: int = 0
    omniscient: ClassVar[bool] = False
    _gen: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise ValueError(f"Gaussian needs sigma >= 0, got {self.sigma!r}")
        self.reset()

    def reset(self) -> None:
        """Restart the random sequence from ``seed``."""
        self._gen = _generator(self.seed)

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, "Gaussian", self.omniscient)
        noise = torch.randn(own.shape, generator=self._gen, dtype=own.dtype)
        return noise.mul_(float(self.sigma)).to(own.device)


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@dataclass
class NonFinite:
    """Non-finite vectors: all NaN (``kind="nan"``), all +Inf (``"inf"``), all -Inf
    (``"-inf"``), or per coordinate one of the three drawn uniformly (``"mix"``) from a
    generator seeded once with ``seed``. Tests that validation rejects such replies."""

    kind: str = "nan"
    seed: int = 0
    omniscient: ClassVar[bool] = False
    _gen: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.kind = str(self.kind).lower()
        if self.kind not in (*_NONFINITE, "mix"):
            raise ValueError(
                f"NonFinite kind must be one of {[*_NONFINITE, 'mix']}, got {self.kind!r}"
            )
        self.reset()

    def reset(self) -> None:
        """Restart the random sequence of ``"mix"`` from ``seed``."""
        self._gen = _generator(self.seed)

    def __call__(self, honest: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        check_attack_input(honest, own, "NonFinite", self.omniscient)
        if self.kind != "mix":
            return torch.full_like(own, _NONFINITE[self.kind])
        values = torch.tensor(list(_NONFINITE.values()), dtype=own.dtype)
        pick = torch.randint(0, 3, own.shape, generator=self._gen)
        return values[pick].to(own.device)
