"""The targets of ``flwr-byz reproduce``: every claim, then the other sections, in RESULTS.md's
order; ``all`` is every one of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..specs import unknown
from .backdoor import backdoor_matrix
from .matrix import attack_matrix
from .papers import CLAIMS
from .performance import performance_report
from .resets import ef21_resets
from .section import Section
from .workspace import Workspace

__all__ = ["TARGETS", "resolve_targets"]

#: target -> section builder, in RESULTS.md's order.
TARGETS: dict[str, Callable[[Workspace], Section]] = {
    **{k: c.run for k, c in CLAIMS.items()},
    "ef21-resets": ef21_resets,
    "matrix": attack_matrix,
    "backdoor": backdoor_matrix,
    "performance": performance_report,
}


def resolve_targets(names: Sequence[str]) -> list[str]:
    """``["all"]`` -> every target; unknown names raise ``ValueError`` listing the known ones."""
    keys = [n.strip().lower() for n in names] or ["all"]
    if "all" in keys:
        return list(TARGETS)
    for key in keys:
        if key not in TARGETS:
            raise unknown("target", key, ["all", *TARGETS])
    return list(dict.fromkeys(keys))
