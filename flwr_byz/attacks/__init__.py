"""Attacks: pure torch, ``(honest [h, d], own [b, d]) -> [b, d]`` (and the data attacks:
LabelFlip and the backdoors of ``backdoor``); ShiftBack reads the attacked method's attack
surface (a ``SurfaceAttack``). ``get_attack`` parses spec strings."""

from .backdoor import (
    DBA,
    Backdoor,
    BadNets,
    ModelReplacement,
    Neurotoxin,
    backdoor_test_set,
    check_attack_method,
    is_backdoor,
)
from .base import Attack, SurfaceAttack, check_attack_input, honest_stats
from .data import LabelFlip
from .omniscient import ALIE, IPM, Mimic, MinMax, MinSum, alie_z
from .registry import ATTACKS, attack_spec, get_attack
from .server import SERVER_ATTACKS, ServerAttack, get_server_attack
from .shiftback import ShiftBack
from .vector import BitFlip, Gaussian, NoAttack, NonFinite, Scale, SignFlip

__all__ = [
    "ALIE",
    "ATTACKS",
    "DBA",
    "IPM",
    "SERVER_ATTACKS",
    "Attack",
    "Backdoor",
    "BadNets",
    "BitFlip",
    "Gaussian",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "ModelReplacement",
    "Neurotoxin",
    "NoAttack",
    "NonFinite",
    "Scale",
    "ServerAttack",
    "ShiftBack",
    "SignFlip",
    "SurfaceAttack",
    "alie_z",
    "attack_spec",
    "backdoor_test_set",
    "check_attack_input",
    "check_attack_method",
    "get_attack",
    "get_server_attack",
    "honest_stats",
    "is_backdoor",
]
