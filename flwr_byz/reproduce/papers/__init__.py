"""The papers' claims, one module per paper, collected in the order of the papers."""

from __future__ import annotations

from ..claim import Claim
from .byzsgd import C4_1, C4_2
from .ef21 import C2_1, C2_2
from .marina import C1_1, C1_2
from .mu2sgd import C3_1, C3_2

__all__ = ["CLAIMS"]

#: claim key -> Claim, in the order of the papers (C1.1 ... C4.2).
CLAIMS: dict[str, Claim] = {c.key: c for c in (C1_1, C1_2, C2_1, C2_2, C3_1, C3_2, C4_1, C4_2)}
