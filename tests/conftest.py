"""The suite runs with one torch thread: its models are tiny, and on 2 busy cores intra-op
threads make each forward/backward pass many times slower. ``$OMP_NUM_THREADS`` is what an
experiment's ``threads`` resolves to when unset (``flwr_byz.simulations.threads``), and what
torch and the processes the tests start (Ray actors, SuperNodes) read when they start."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def prepare_checks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The configs ``prepare`` checks during the test (its work, ``runner._check``), in order:
    one per run when a run's config is prepared once."""
    from flwr_byz.simulations import runner

    seen: list[Any] = []
    check = runner._check

    def counting(config: Any) -> Any:
        seen.append(config)
        return check(config)

    monkeypatch.setattr(runner, "_check", counting)
    return seen
