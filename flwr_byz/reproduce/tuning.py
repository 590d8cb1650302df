"""Hyperparameters chosen by the worst case over the attacks, on a validation split (the rule of
ByzFL's benchmark).

Each candidate of a grid (e.g. a learning rate, or a learning rate and a defence's key
hyperparameter) runs once per attack with a tuning seed of its own, trained without and scored
on a fixed holdout of the training split (the dataset option ``validation=<fraction>``): the
test split the reported cells are measured on is never seen. A run's score is its tail
accuracy, the mean over the last ``TAIL_FRACTION`` of its rounds (the plateau rule's window);
the candidate with the best worst score over the attacks wins (``stats.best_worst_case``), a
candidate within ``TIE`` of the best counting as tied, the earlier in the grid winning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from ..simulations.config import ExperimentConfig
from ..simulations.result import Result
from .stats import PLATEAU_FRACTION, best_worst_case

__all__ = [
    "TAIL_FRACTION",
    "TIE",
    "TUNING_SEED",
    "VALIDATION",
    "Choice",
    "choose",
    "tail_accuracy",
    "tuning_config",
    "with_validation",
]

#: Share of the training split held out to score the tuning runs.
VALIDATION = 0.2
#: Seed of the tuning runs (not one of the reported seeds).
TUNING_SEED = 100
#: Share of the last rounds whose mean accuracy scores a run (the plateau rule's window).
TAIL_FRACTION = PLATEAU_FRACTION
#: Candidates whose worst score is within this of the best are tied (the earlier wins).
TIE = 0.005

K = TypeVar("K")


def with_validation(dataset: str, fraction: float = VALIDATION) -> str:
    """The dataset spec ``dataset`` with a ``fraction`` validation holdout as its evaluation
    split: ``mnist1d`` -> ``mnist1d:validation=0.2``, ``local:/d`` ->
    ``local:/d,validation=0.2``."""
    sep = "," if ":" in dataset else ":"
    return f"{dataset}{sep}validation={fraction}"


def tuning_config(cfg: ExperimentConfig, seed: int = TUNING_SEED) -> ExperimentConfig:
    """``cfg`` as a tuning run: the tuning ``seed``, scored on the validation holdout."""
    return replace(cfg, seed=seed, dataset=with_validation(cfg.dataset))


def tail_accuracy(result: Result, fraction: float = TAIL_FRACTION) -> float:
    """Mean accuracy of the last ``fraction`` of the rounds (at least one); NaN without
    rounds or when any of them is NaN (a diverged run)."""
    accs = [r.accuracy for r in result.rounds]
    if not accs:
        return math.nan
    k = max(1, int(len(accs) * fraction))
    tail = accs[-k:]
    return math.nan if any(math.isnan(a) for a in tail) else math.fsum(tail) / k


@dataclass(frozen=True)
class Choice(Generic[K]):
    """The chosen candidate, its worst score and where it came from (every candidate's
    scores per attack, in grid order)."""

    chosen: K
    worst: float
    scores: Mapping[K, Mapping[str, float]]

    def worst_of(self, candidate: K) -> float:
        """The worst score of ``candidate`` (NaN counts as the lowest)."""
        values = self.scores[candidate].values()
        return min((-math.inf if math.isnan(v) else v) for v in values)


def choose(
    grid: Sequence[K], results: Mapping[K, Mapping[str, Result]], tie: float = TIE
) -> Choice[K]:
    """The candidate of ``grid`` (in order) with the best worst tail accuracy over its runs
    (``results[candidate][attack]``)."""
    scores = {k: {a: tail_accuracy(r) for a, r in results[k].items()} for k in grid}
    chosen, worst = best_worst_case(scores, tie=tie)
    return Choice(chosen, worst, scores)
