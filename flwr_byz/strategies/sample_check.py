"""Fail fast, never silently: the sample a strategy draws against what its rule needs.

Before round 1 every strategy of ours compares the number of replies a round can bring (the
nodes it samples) with what its aggregator needs for ``f`` (``min_inputs``/``max_inputs`` of
``flwr_byz.aggregators.base``, e.g. Krum's n >= 2f + 3). Too few would skip every round and
keep the initial model; instead :func:`require` raises :class:`SampleTooSmallError` naming
the numbers and the settings that fix it. ``f="auto"`` (:func:`auto_f`) takes the largest f
the sample allows and logs it. A round that still ends with too few valid replies (nodes lost
mid-run, rejected replies) keeps the model and says so; at the end of ``start`` the
:class:`RunSummary` mixin logs one line counting the skipped rounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from typing import Any, Literal, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.supercore import log

from ..aggregators.base import (
    accepts,
    largest_f,
    max_inputs,
    min_inputs,
    requirement,
    set_f,
)
from ..protocol.keys import SKIPPED_KEY

__all__ = [
    "AUTO",
    "FArg",
    "RunSummary",
    "SampleTooSmallError",
    "auto_f",
    "fraction_for",
    "parse_f",
    "require",
    "skipped_rounds",
]

AUTO = "auto"
"""``f=AUTO``: the largest f the sampled nodes allow for the rule, chosen before round 1."""

#: What a strategy's ``f`` takes: a count, None (the rule's own / 0) or ``"auto"``.
FArg = int | Literal["auto"] | None

A = TypeVar("A")


class SampleTooSmallError(ValueError):
    """The nodes a strategy samples per round cannot satisfy its rule for ``f``."""


def parse_f(f: Any) -> tuple[int | None, bool]:
    """``(f, auto)`` from a strategy's ``f`` argument (``"auto"``: ``(None, True)``)."""
    if isinstance(f, str):
        if f.strip().lower() != AUTO:
            raise ValueError(f'f must be an int >= 0, None or "auto", got {f!r}')
        return None, True
    return f, False


def _rule_f(rule: object) -> int:
    return int(getattr(rule, "f", 0) or 0)


def require(
    rule: object,
    n: int,
    *,
    who: str,
    sample: str,
    fixes: list[str],
) -> None:
    """Raise :class:`SampleTooSmallError` unless ``rule`` runs on ``n`` replies per round.

    ``who`` names the strategy (and the round kind), ``sample`` says where ``n`` comes from,
    ``fixes`` the settings that raise it; the message adds the f that would fit."""
    if accepts(rule, n):
        return
    f, need, top = _rule_f(rule), min_inputs(rule), max_inputs(rule)
    best = largest_f(rule, n)
    if n < need:
        what = f"needs at least {need} replies per round ({requirement(rule)})"
    else:
        what = f"takes at most {top} replies per round ({requirement(rule)})"
        fixes = [f"sample at most {top} nodes per round"]
    if best is not None:
        f_fix = f'f <= {best} (the most this rule tolerates with {n} replies) or f="auto"'
    else:
        f_fix = f"no f fits {n} replies (the rule needs {min_inputs(rule, 0)} even with f = 0)"
    name = repr(rule) if "f=" in repr(rule) else f"{rule!r} with f={f}"
    raise SampleTooSmallError(
        f"{who}: {name} {what}, but {sample}: every round would be skipped "
        f"and the model never change. Fix one of: {'; '.join([*fixes, f_fix])}."
    )


def auto_f(
    rule: A,
    n: int,
    who: str,
    fits: Callable[[int], bool] | None = None,
    refuse: Callable[[A], None] | None = None,
) -> A:
    """``rule`` set for the largest f it tolerates on ``n`` replies per round (and for which
    ``fits(f)`` holds, when given: a strategy's other conditions); logs the choice. When not
    even f = 0 runs, ``refuse(rule set for f = 0)`` raises the strategy's own error (default:
    :func:`require` with no fixes)."""
    top = largest_f(rule, n)
    f = None if top is None else next((g for g in range(top, -1, -1) if not fits or fits(g)), None)
    if f is None:  # not even f = 0: raises, unless another condition failed (the caller's)
        zero = set_f(rule, 0)
        if refuse is not None:
            refuse(zero)
        require(zero, n, who=who, sample=f"each round samples {n} nodes", fixes=[])
        f = 0
    chosen = set_f(rule, f)
    log(
        INFO,
        '%s: f="auto": f=%d, the most %r tolerates with the %d replies a round samples',
        who,
        f,
        chosen,
        n,
    )
    return chosen


def fraction_for(need: int, connected: int) -> float:
    """The smallest fraction (2 decimals) with ``int(connected * fraction) >= need``."""
    fr = math.ceil(100 * need / connected) / 100
    while int(connected * fr) < need:
        fr = round(fr + 0.01, 2)
    return min(fr, 1.0)


def skipped_rounds(metrics: Mapping[int, MetricRecord], num_rounds: int) -> list[int]:
    """The rounds (1..``num_rounds``) whose train metrics say ``skipped`` or that have none
    (nothing was aggregated)."""
    out = []
    for r in range(1, num_rounds + 1):
        record = metrics.get(r)
        value = None if record is None else record.get(SKIPPED_KEY)
        if record is None or (isinstance(value, (int, float)) and value > 0):
            out.append(r)
    return out


def log_skipped(name: str, skipped: list[int], num_rounds: int, rule: object) -> None:
    """One line: how many of the run's rounds kept the model for want of valid replies."""
    if not skipped:
        log(INFO, "%s: no round skipped (%d of %d aggregated)", name, num_rounds, num_rounds)
        return
    shown = ", ".join(str(r) for r in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
    log(
        WARNING,
        "%s: %d of %d rounds skipped (too few valid replies for %r: the model was kept): rounds %s",
        name,
        len(skipped),
        num_rounds,
        rule,
        shown,
    )


class RunSummary:
    """Mixin for a Flower ``Strategy``: ``start`` ends with one line counting the skipped
    rounds (:func:`skipped_rounds` of the result's train metrics)."""

    aggregator: Any

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's ``Strategy.start``, then the skipped-rounds line."""
        result: Result = super().start(  # type: ignore[misc]
            grid,
            initial_arrays,
            num_rounds,
            timeout,
            train_config,
            evaluate_config,
            evaluate_fn,
        )
        skipped = skipped_rounds(result.train_metrics_clientapp, num_rounds)
        log_skipped(type(self).__name__, skipped, num_rounds, self.aggregator)
        return result
