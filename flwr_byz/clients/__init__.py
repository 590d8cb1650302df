"""Flower client side and adversaries: GradientClient (the client step of the method
strategies), ByzantineGrid (server-side, omniscient, simulation),
byzantine_mod / byzantine_app (per-node, node config), data_attack_of / label_flip_requested
(data attacks)."""

from ..protocol.keys import ATTACK_KEY, OPS
from .gradient import GradientClient
from .grid import ByzantineGrid
from .mods import (
    byzantine_app,
    byzantine_mod,
    data_attack_of,
    label_flip_requested,
    make_byzantine_mod,
    node_attack,
)

__all__ = [
    "ATTACK_KEY",
    "OPS",
    "ByzantineGrid",
    "GradientClient",
    "byzantine_app",
    "byzantine_mod",
    "data_attack_of",
    "label_flip_requested",
    "make_byzantine_mod",
    "node_attack",
]
