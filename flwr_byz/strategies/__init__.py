"""Flower strategies (the Flower edge): RobustFedAvg and FLTrust (drop-in), the method strategies
(RobustMomentum, ByzVRMarinaPP, ByzEF21SGDM with its baselines ByzEF21 and BRCSGD, Mu2SGD,
ByzSGD), reply validation, and the check of the sample size against the rule's f
(``SampleTooSmallError``)."""

from .byz_ef21_sgdm import BRCSGD, RESET_REASONS, ByzEF21, ByzEF21SGDM
from .byz_vr_marina import ByzVRMarinaPP
from .byzsgd import ByzSGD
from .fltrust import FLTrust
from .method import MethodStrategy
from .mu2sgd import Mu2SGD
from .robust_fedavg import RobustFedAvg
from .robust_momentum import RobustMomentum
from .sample_check import SampleTooSmallError
from .validation import REASONS, CheckedReplies, Rejection, validate_replies

__all__ = [
    "BRCSGD",
    "REASONS",
    "RESET_REASONS",
    "ByzEF21",
    "ByzEF21SGDM",
    "ByzSGD",
    "ByzVRMarinaPP",
    "CheckedReplies",
    "FLTrust",
    "MethodStrategy",
    "Mu2SGD",
    "Rejection",
    "RobustFedAvg",
    "RobustMomentum",
    "SampleTooSmallError",
    "validate_replies",
]
