"""The round metric ``byzantine-replies``: in-process nodes behind ``byzantine_mod``
(run config as the README's recipe declares it) answer Flower's FedAvg and our strategies;
the round's count is the number of Byzantine replies, accepted or rejected."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg, Strategy

from flwr_byz.clients import byzantine_mod
from flwr_byz.protocol import BYZANTINE_REPLIES_KEY, sum_byzantine_replies
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import RobustFedAvg
from tests.clients.nodes import honest_client, model

NODES = 7
ROUNDS = 3


def _train(strategy: Strategy, run_config: dict[str, Any]) -> dict[int, dict[str, Any]]:
    app = honest_client()
    grid = LocalGrid(NODES, lambda msg, ctx: byzantine_mod(msg, ctx, app))
    for ctx in grid.contexts.values():
        ctx.run_config = dict(run_config)
    result = strategy.start(
        grid=grid,
        initial_arrays=model(),
        num_rounds=ROUNDS,
        train_config=ConfigRecord({"lr": 0.1}),
    )
    return {r: dict(m) for r, m in result.train_metrics_clientapp.items()}


def _declared(attack: str, k: int) -> dict[str, Any]:
    return {"byzantine-attack": attack, "byzantine-num-nodes": k}


@pytest.mark.parametrize(
    "strategy",
    [
        lambda: RobustFedAvg("median", f=2, fraction_evaluate=0.0),
        lambda: FedAvg(fraction_evaluate=0.0, train_metrics_aggr_fn=sum_byzantine_replies),
    ],
    ids=["RobustFedAvg", "FedAvg+sum_byzantine_replies"],
)
def test_every_round_counts_the_byzantine_replies(strategy: Any) -> None:
    metrics = _train(strategy(), _declared("sign-flip:scale=10", 2))
    assert [metrics[r][BYZANTINE_REPLIES_KEY] for r in range(1, ROUNDS + 1)] == [2] * ROUNDS


def test_flowers_own_average_turns_the_count_into_a_share() -> None:
    """Without ``sum_byzantine_replies`` Flower's FedAvg averages the marks: 2 of 7 equal
    nodes report 2/7, not 2 (the README says so)."""
    metrics = _train(FedAvg(fraction_evaluate=0.0), _declared("sign-flip", 2))
    assert metrics[1][BYZANTINE_REPLIES_KEY] == pytest.approx(2 / 7)


def test_rejected_byzantine_replies_count_too() -> None:
    metrics = _train(RobustFedAvg("median", f=2, fraction_evaluate=0.0), _declared("non-finite", 2))
    assert metrics[1][BYZANTINE_REPLIES_KEY] == 2
    assert metrics[1]["rejected-non-finite"] == 2 and metrics[1]["accepted"] == NODES - 2


def test_honest_runs_count_zero_and_unmarked_runs_have_no_key() -> None:
    declared = _train(RobustFedAvg("median", f=2, fraction_evaluate=0.0), _declared("none", 0))
    assert declared[1][BYZANTINE_REPLIES_KEY] == 0
    plain = _train(RobustFedAvg("median", f=2, fraction_evaluate=0.0), {})
    assert BYZANTINE_REPLIES_KEY not in plain[1]
