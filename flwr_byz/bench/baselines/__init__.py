"""The implementations our aggregators are compared with: Flower's (:mod:`.flower`: the
Message-API strategies, their numpy core and the legacy functions) and ByzFL's (:mod:`.byzfl`,
optional). :data:`BASELINES` names what ``--baselines`` selects."""

from __future__ import annotations

__all__ = ["BASELINES", "NOT_REQUESTED"]

BASELINES = ("flower_msg", "flower_numpy", "flower_legacy", "byzfl")
NOT_REQUESTED = "skipped: not requested (--baselines)"
