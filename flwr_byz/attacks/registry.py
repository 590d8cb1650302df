"""``get_attack(spec, seed)``: build an attack from a spec string.

A spec is ``name`` or ``name:arg,arg,...`` (``flwr_byz.specs``): ``"alie:z=1.5"``,
``"sign-flip:10"``, ``"gaussian:sigma=2"``, ``"ipm:eps=0.5"``, ``"non-finite:mix"``,
``"min-max:unit"``. Attacks with a ``seed`` field get the ``seed`` passed here unless the
spec sets it.
"""

from __future__ import annotations

import dataclasses

from ..specs import build, split_part, unknown
from .backdoor import DBA, BadNets, ModelReplacement, Neurotoxin
from .base import Attack
from .data import LabelFlip
from .omniscient import ALIE, IPM, Mimic, MinMax, MinSum
from .shiftback import ShiftBack
from .vector import BitFlip, Gaussian, NoAttack, NonFinite, Scale, SignFlip

__all__ = ["ALIASES", "ATTACKS", "attack_names", "attack_spec", "get_attack"]

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
    "badnets": BadNets,
    "dba": DBA,
    "model-replacement": ModelReplacement,
    "neurotoxin": Neurotoxin,
}
"""Attacks by canonical name (the specs of docs/ALGORITHMS.md, Attacks)."""

ALIASES = {
    "signflip": "sign-flip", "bitflip": "bit-flip", "nonfinite": "non-finite",
    "minmax": "min-max", "minsum": "min-sum", "labelflip": "label-flip", "shiftback": "shift-back",
    "empire": "ipm", "little": "alie", "noise": "gaussian",
    "badnet": "badnets", "model-replace": "model-replacement", "replacement": "model-replacement",
    "constrain-and-scale": "model-replacement", "distributed-backdoor": "dba",
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


def get_attack(spec: str, seed: int = 0) -> Attack | LabelFlip | BadNets:
    """Build the attack described by ``spec`` (see module doc); ``seed`` seeds random ones."""
    name, args = split_part(spec.strip())
    key = name.lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise unknown("attack", name, attack_names(), spec)
    attack: Attack | LabelFlip | BadNets = build(
        ATTACKS[key], args, spec.strip(), "attack", {"seed": seed}
    )
    return attack


def attack_spec(attack: object) -> str:
    """The spec string that ``get_attack`` turns back into an equal attack: the canonical
    name and every init field as ``key=value`` (what ByzantineGrid and the mod put in a
    message for the ClientApp's data attack). ``ValueError`` for a class the registry does
    not know or a field value a spec cannot hold."""
    name = next((k for k, cls in ATTACKS.items() if type(attack) is cls), None)
    if name is None or not dataclasses.is_dataclass(attack):
        raise ValueError(f"attack_spec: {type(attack).__name__} is not a registered attack")
    args = []
    for fd in dataclasses.fields(attack):
        if not fd.init:
            continue
        value = getattr(attack, fd.name)
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ValueError(f"attack_spec: {name}'s {fd.name}={value!r} is not a scalar")
        if isinstance(value, str) and ("," in value or ":" in value):
            raise ValueError(f"attack_spec: {name}'s {fd.name}={value!r} holds ',' or ':'")
        args.append(f"{fd.name}={value!r}")
    return f"{name}:{','.join(args)}" if args else name
