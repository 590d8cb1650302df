"""The method strategies (robust-momentum, byz-vr-marina-pp) through the runner's production
path, in process (the real ClientApp handlers answer the ops with GradientClient)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.runner import prepare, train_on_grid

from ..clients.nodes import ShuffledGrid

#: The settings these tests were written with, explicit (the methods' own defaults differ).
BASE = ExperimentConfig(
    dataset="digits", clients=6, clients_per_round=3, rounds=6, lr=0.5, batch_size=32,
    aggregator="median", momentum=0.9, compressor="none", local_epochs=2,
)  # fmt: skip


def _run(cfg: ExperimentConfig) -> dict:
    return train_on_grid(ShuffledGrid(cfg.clients, 0), cfg).to_dict()


@pytest.mark.parametrize("method", ["robust-momentum", "byz-vr-marina-pp"])
def test_method_learns_and_reports(method: str) -> None:
    result = _run(dataclasses.replace(BASE, method=method, rounds=12, lr=1.0))
    accuracies = [r["accuracy"] for r in result["rounds"]]
    assert accuracies[-1] > 0.6 > accuracies[0] - 0.2  # digits MLP, 12 server steps
    assert result["config"]["method"] == method
    assert all(r["rejected"] == 0 for r in result["rounds"])


def test_marina_randk_shrinks_the_uplink_of_difference_rounds() -> None:
    cfg = dataclasses.replace(BASE, method="byz-vr-marina-pp", params={"p": 0.01})
    dense = _run(cfg)["rounds"]
    sparse = _run(dataclasses.replace(cfg, compressor="randk:0.1"))["rounds"]
    # round 1 is a full round (dense gradients from every client); later rounds send diffs
    assert dense[0]["bytes_up"] == pytest.approx(sparse[0]["bytes_up"], rel=0.01)
    ratio = sum(r["bytes_up"] for r in sparse[1:]) / sum(r["bytes_up"] for r in dense[1:])
    assert 0.08 < ratio < 0.15, ratio  # K = d/10 values + an 8-byte seed + metadata
    assert dense[1]["bytes_down"] > 1.9 * dense[0]["bytes_down"] / 2  # x^{k+1} and x^k


def test_shift_back_is_bound_to_the_strategy() -> None:
    cfg = dataclasses.replace(
        BASE, method="robust-momentum", attack="shift-back", byzantine=4, clients=6,
        clients_per_round=3, rounds=8,
    )  # fmt: skip
    attacked = _run(cfg)["rounds"]
    honest = _run(dataclasses.replace(cfg, attack="none"))["rounds"]
    assert all(math.isfinite(r["loss"]) for r in attacked)
    # with 4 of 6 clients Byzantine most rounds have a Byzantine majority: back to x^0
    assert attacked[-1]["accuracy"] < honest[-1]["accuracy"] - 0.2


@pytest.mark.parametrize(
    "change,message",
    [
        ({"method": "robust-fedavg", "compressor": "randk:0.1"}, "takes no compressor"),
        ({"method": "byz-vr-marina-pp", "compressor": "topk:0.1"}, "unbiased"),
        ({"method": "byz-vr-marina-pp", "compressor": "zip"}, "unknown compressor"),
        ({"method": "byz-vr-marina-pp", "params": {"alpha": -1}}, "alpha"),
        ({"method": "robust-momentum", "params": {"clip_alpha": 0}}, "clip_alpha"),
        ({"method": "robust-momentum", "params": {"nope": 1}}, "no parameter"),
    ],
)
def test_bad_method_configs_fail_before_running(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare(dataclasses.replace(BASE, **change))
