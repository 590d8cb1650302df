"""Attacks: pure torch, ``(honest [h, d], own [b, d]) -> [b, d]`` (and the data attack
LabelFlip); ShiftBack reads the attacked method's attack surface (a ``SurfaceAttack``).
``get_attack`` parses spec strings."""

from .base import Attack, SurfaceAttack, check_attack_input, honest_stats
from .data import LabelFlip
from .omniscient import ALIE, IPM, Mimic, MinMax, MinSum, alie_z
from .registry import ATTACKS, get_attack
from .server import SERVER_ATTACKS, ServerAttack, get_server_attack
from .shiftback import ShiftBack
from .vector import BitFlip, Gaussian, NoAttack, NonFinite, Scale, SignFlip

__all__ = [
    "ALIE",
    "ATTACKS",
    "IPM",
    "SERVER_ATTACKS",
    "Attack",
    "BitFlip",
    "Gaussian",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "NoAttack",
    "NonFinite",
    "Scale",
    "ServerAttack",
    "ShiftBack",
    "SignFlip",
    "SurfaceAttack",
    "alie_z",
    "check_attack_input",
    "get_attack",
    "get_server_attack",
    "honest_stats",
]
