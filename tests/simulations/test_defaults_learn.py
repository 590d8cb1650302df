"""Every method learns digits with its own defaults: no attack and only ``--method M
--dataset digits --rounds 40`` set reach at least 80% test accuracy (docs/DEFAULTS.md).

The batched engine computes the same numbers as the others, faster; Flower's ``gc.collect``
per ArrayRecord conversion is skipped (``without_flower_gc``: only the time changes, e.g.
flower-bulyan ~3 min -> ~5 s)."""

from __future__ import annotations

import pytest

from flwr_byz.reproduce.pool import without_flower_gc
from flwr_byz.simulations.batched.engine import DRIVERS
from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.engines import run_experiments
from flwr_byz.simulations.methods import METHODS


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_the_method_defaults_reach_80_percent_on_digits(method: str) -> None:
    cfg = ExperimentConfig(method=method, dataset="digits", rounds=40)
    engine = "batched" if method in DRIVERS else "local"  # fltrust: the local engine only
    with without_flower_gc():
        (result,) = run_experiments([cfg], engine=engine)
    assert result.config["lr"] is not None  # the method's defaults, recorded
    assert result.accuracy >= 0.80, (method, result.accuracy)
