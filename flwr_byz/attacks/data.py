"""Data attacks: a Byzantine client corrupts its training data, then trains honestly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import torch

__all__ = ["LabelFlip"]

Labels = TypeVar("Labels", torch.Tensor, np.ndarray)


@dataclass
class LabelFlip:
    """Label flipping: the node trains on ``y' = C - 1 - y`` for ``C`` classes (Allen-Zhu et al.
    2021; Karimireddy et al. 2022). Applied by the client to its labels, not to vectors.

    ``C`` is ``num_classes`` of the constructor or of the call (both given: they must agree).
    Integer labels in ``[0, C)``, a torch tensor or a NumPy array; the result has the same
    type, dtype (and device).
    """

    num_classes: int | None = None
    omniscient: ClassVar[bool] = False
    data_attack: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or self.num_classes < 1
        ):
            raise ValueError(f"LabelFlip needs num_classes >= 1, got {self.num_classes!r}")

    def __call__(self, labels: Labels, num_classes: int | None = None) -> Labels:
        c = self.num_classes if num_classes is None else int(num_classes)
        if c is None:
            raise ValueError("LabelFlip: the number of classes is unknown; pass num_classes")
        if self.num_classes is not None and c != self.num_classes:
            raise ValueError(f"LabelFlip: num_classes={c} but the attack has {self.num_classes}")
        if isinstance(labels, torch.Tensor):
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ValueError(f"LabelFlip: labels must be integers, got {labels.dtype}")
            lo, hi = (int(labels.min()), int(labels.max())) if labels.numel() else (0, 0)
        elif isinstance(labels, np.ndarray):
            if not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"LabelFlip: labels must be integers, got {labels.dtype}")
            lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
        else:
            raise ValueError(
                f"LabelFlip: labels must be a torch.Tensor or numpy array, "
                f"got {type(labels).__name__}"
            )
        if lo < 0 or hi >= c:
            raise ValueError(f"LabelFlip: labels must lie in [0, {c}), got range [{lo}, {hi}]")
        return (c - 1) - labels
