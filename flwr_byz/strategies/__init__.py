"""Flower strategies (the Flower edge): RobustFedAvg (drop-in), the method strategies
(RobustMomentum, ByzVRMarinaPP) and reply validation."""

from .byz_vr_marina import ByzVRMarinaPP
from .method import MethodStrategy
from .robust_fedavg import RobustFedAvg
from .robust_momentum import RobustMomentum
from .validation import REASONS, CheckedReplies, Rejection, validate_replies

__all__ = [
    "REASONS",
    "ByzVRMarinaPP",
    "CheckedReplies",
    "MethodStrategy",
    "Rejection",
    "RobustFedAvg",
    "RobustMomentum",
    "validate_replies",
]
