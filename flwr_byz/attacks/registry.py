"""``get_attack(spec, seed)``: build an attack from a spec string.

A spec is ``name`` or ``name:arg,arg,...`` (``flwr_byz.specs``): ``"alie:z=1.5"``,
``"sign-flip:10"``, ``"gaussian:sigma=2"``, ``"ipm:eps=0.5"``, ``"non-finite:mix"``,
``"min-max:unit"``. Attacks with a ``seed`` field get the ``seed`` passed here unless the
spec sets it.
"""

from __future__ import annotations

from ..specs import build, split_part, unknown
from .base import Attack
from .data import LabelFlip
from .omniscient import ALIE, IPM, Mimic, MinMax, MinSum
from .shiftback import ShiftBack
from .vector import BitFlip, Gaussian, NoAttack, NonFinite, Scale, SignFlip

__all__ = ["ALIASES", "ATTACKS", "attack_names", "get_attack"]

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


def attack_names(per_node: bool = False) -> dict[str, list[str]]:
    """Every name an attack spec may take, by group (what the errors and ``--help`` list);
    ``per_node``: only the attacks a node can make alone (not the omniscient ones, which read
    the honest replies)."""
    omniscient = {k for k, cls in ATTACKS.items() if getattr(cls, "omniscient", False)}
    names = sorted(set(ATTACKS) - (omniscient if per_node else set()))
    aliases = sorted(a for a, k in ALIASES.items() if k in names)
    return {"attacks": names, "other spellings": aliases}


def get_attack(spec: str, seed: int = 0) -> Attack | LabelFlip:
    """Build the attack described by ``spec`` (see module doc); ``seed`` seeds random ones."""
    name, args = split_part(spec.strip())
    key = name.lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise unknown("attack", name, attack_names(), spec)
    attack: Attack | LabelFlip = build(ATTACKS[key], args, spec.strip(), "attack", {"seed": seed})
    return attack
