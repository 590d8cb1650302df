"""The suite runs with one torch thread: its models are tiny, and on 2 busy cores intra-op
threads make each forward/backward pass many times slower. ``$OMP_NUM_THREADS`` is what an
experiment's ``threads`` resolves to when unset (``flwr_byz.simulations.threads``), and what
torch and the processes the tests start (Ray actors, SuperNodes) read when they start.

``make test`` runs the suite in three passes: the tests that run in this process, on two
pytest-xdist workers (``-m "not serial"``); one at a time, the ``serial`` ones: those that start
Flower runtimes, Ray, process pools or the CLI as a subprocess, which use several cores
themselves and wait on other processes (``SERIAL`` below marks them); then the deployment tests
(serial too), two at a time: they mostly wait on Flower's polls and heartbeats, and every
deployment listens on free ports of its own and is cleaned up by its own work directory."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ["OMP_NUM_THREADS"] = "1"

#: Test files (or folders) whose tests all start other processes: marked ``serial``.
SERIAL = (
    "tests/deployment/",
    "tests/reproduce/test_pipeline.py",
    "tests/simulations/test_flower_app.py",
    "tests/simulations/test_interrupt.py",
    "tests/simulations/test_scale.py",
    "tests/simulations/test_simulation_runtime.py",
    "tests/simulations/test_simulation_winddown.py",
    "tests/simulations/test_threads.py",
    "tests/strategies/test_byzantine_recipe.py",
    "tests/test_cli.py",
    "tests/test_cli_prepare.py",
    "tests/test_interrupt.py",
    "tests/test_wheel.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``serial`` the tests of ``SERIAL`` and every ``deployment`` test."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path.startswith(SERIAL) or item.get_closest_marker("deployment"):
            item.add_marker(pytest.mark.serial)


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
