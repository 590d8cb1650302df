"""A run of the round loop (``flwr-byz run``, ``flwr run .``) that keeps the model in some
rounds for want of valid replies ends with one line counting them (issue: never silently)."""

from __future__ import annotations

import logging

import pytest

from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiment


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize(("byzantine", "expected"), [(2, "2 of 2 rounds skipped"), (0, None)])
def test_the_run_ends_with_the_skipped_rounds_counted(byzantine: int, expected: str | None) -> None:
    """Krum(f=1) needs 5 valid replies of 5; two non-finite ones leave 3: both rounds kept
    the model, and one WARNING line says so (none without the attack)."""
    cfg = ExperimentConfig(
        method="robust-fedavg",
        aggregator="krum",
        attack="non-finite",
        byzantine=byzantine,
        clients=5,
        rounds=2,
        dataset="digits",
        f=1,
    )
    logger = logging.getLogger("flwr")
    handler = _Lines()
    logger.addHandler(handler)
    try:
        result = run_experiment(cfg, engine="local")
    finally:
        logger.removeHandler(handler)
    counted = [line for line in handler.lines if "rounds skipped" in line]
    if expected is None:
        assert counted == []
        assert all(r.metrics.get("skipped", 0) == 0 for r in result.rounds)
    else:
        assert len(counted) == 1 and expected in counted[0], handler.lines
        assert "rounds 1, 2" in counted[0]
        assert [r.metrics.get("skipped") for r in result.rounds] == [1.0, 1.0]
