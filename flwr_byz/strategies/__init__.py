"""Flower strategies (the Flower edge): RobustFedAvg and reply validation."""

from .robust_fedavg import RobustFedAvg
from .validation import REASONS, CheckedReplies, Rejection, validate_replies

__all__ = ["REASONS", "CheckedReplies", "Rejection", "RobustFedAvg", "validate_replies"]
