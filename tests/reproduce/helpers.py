"""Shared by the reproduce tests: a workspace whose runs are fabricated, and a fabricated
result."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from flwr_byz.reproduce import Budget, Workspace
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.result import Result, RoundRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

Maker = Callable[[str, ExperimentConfig], Result]


class FakeWorkspace(Workspace):
    """A workspace whose runs are made by ``make(name, config)`` instead of trained."""

    def __init__(self, tmp: Path, make: Maker, budget: Budget | None = None) -> None:
        super().__init__(budget or Budget.make(quick=True, jobs=1), tmp / "work", tmp / "docs")
        self.make = make
        self.calls: list[ExperimentConfig] = []

    def run(
        self, configs: Mapping[str, ExperimentConfig], engine: str | None = None
    ) -> dict[str, Result]:
        self.calls += configs.values()
        return {k: self.make(k, c) for k, c in configs.items()}


def result(cfg: ExperimentConfig, accs: list[float], **per_round: list[float]) -> Result:
    """A finished result with the accuracies ``accs`` (1 MB up per round) and any other
    per-round field given."""
    rounds = []
    for i, acc in enumerate(accs):
        rec = RoundRecord(i + 1, loss=1.0, accuracy=acc, bytes_up=1_000_000)
        for key, values in per_round.items():
            setattr(rec, key, values[i])
        rounds.append(rec)
    return Result(config=cfg.to_dict(), rounds=rounds).finish()
