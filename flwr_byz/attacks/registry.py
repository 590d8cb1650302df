"""``get_attack(spec, seed)``: build an attack from a spec string.

A spec is ``name`` or ``name:arg,arg,...`` (``flwr_byz.specs``): ``"alie:z=1.5"``,
``"sign-flip:10"``, ``"gaussian:sigma=2"``, ``"ipm:eps=0.5"``, ``"non-finite:mix"``,
``"min-max:unit"``. Attacks with a ``seed`` field get the ``seed`` passed here unless the
spec sets it.
"""

from __future__ import annotations

from ..specs import build, split_part
from .base import Attack
from .data import LabelFlip
from .omniscient import ALIE, IPM, Mimic, MinMax, MinSum
from .shiftback import ShiftBack
from .vector import BitFlip, Gaussian, NoAttack, NonFinite, Scale, SignFlip

__all__ = ["ALIASES", "ATTACKS", "get_attack"]

ATTACKS: dict[str, type] = {
    "none": NoAttack,
    "sign-flip": SignFlip,
    "bit-flip": BitFlip,
    "scale": Scale,
    "gaussian": Gaussian,
    "non-finite": NonFinite,
    "ipm": IPM,
    "alie": ALIE,
    "min-max": MinMax,
    "min-sum": MinSum,
    "mimic": Mimic,
    "shift-back": ShiftBack,
    "label-flip": LabelFlip,
}
"""Attacks by canonical name (the specs of docs/ALGORITHMS.md, Attacks)."""

ALIASES = {
    "signflip": "sign-flip", "bitflip": "bit-flip", "nonfinite": "non-finite",
    "minmax": "min-max", "minsum": "min-sum", "labelflip": "label-flip", "shiftback": "shift-back",
    "empire": "ipm", "little": "alie", "noise": "gaussian",
}  # fmt: skip
"""Other spellings (``_`` reads as ``-`` too): the reference codes' ``empire``, ``little``."""


def get_attack(spec: str, seed: int = 0) -> Attack | LabelFlip:
    """Build the attack described by ``spec`` (see module doc); ``seed`` seeds random ones."""
    name, args = split_part(spec.strip())
    key = name.lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r} in {spec!r}; known: {sorted(ATTACKS)}")
    attack: Attack | LabelFlip = build(ATTACKS[key], args, spec.strip(), "attack", {"seed": seed})
    return attack
