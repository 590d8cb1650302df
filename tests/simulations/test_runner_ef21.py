"""Byz-EF21-SGDM, Byz-EF21 and BR-CSGD through the runner's production path, in process
(``train_on_grid`` on a ``ShuffledGrid``: the real ClientApp handlers, GradientClient ops).

Besides bytes and validation counts, the runs are checked against identities of the
algorithms that hold exactly on the same seeds: Byz-EF21 is Byz-EF21-SGDM with eta = 1; with
the identity compressor EF21 sends ``v - g`` and the server's copy is ``v``, so Byz-EF21-SGDM
is RobustMomentum and Byz-EF21 is BR-CSGD (plain robust SGD)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import pytest

from flwr_byz.simulations.config import ExperimentConfig
from flwr_byz.simulations.methods import COMPRESSED_METHODS, build_strategy
from flwr_byz.simulations.runner import prepare, train_on_grid
from flwr_byz.strategies import BRCSGD, ByzEF21, ByzEF21SGDM
from tests.quiet import quiet_run

from ..clients.nodes import ShuffledGrid

METHODS = ("byz-ef21-sgdm", "byz-ef21", "br-csgd")
BASE = ExperimentConfig(
    dataset="mnist1d", clients=6, rounds=4, lr=0.5, batch_size=4, aggregator="cwtm", seed=0
)


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    with quiet_run():
        yield


_RUNS: dict[str, list[dict]] = {}  # several tests compare the same runs: run each once


def run(**change: object) -> list[dict]:
    """The round records of ``BASE`` with ``change`` on a ShuffledGrid (cached per config)."""
    cfg = dataclasses.replace(BASE, **change)  # type: ignore[arg-type]
    key = repr(cfg)
    if key not in _RUNS:
        _RUNS[key] = train_on_grid(ShuffledGrid(cfg.clients, 0), cfg).to_dict()["rounds"]
    return [dict(r) for r in _RUNS[key]]


def curve(rounds: list[dict]) -> list[tuple[float, float]]:
    return [(r["accuracy"], r["loss"]) for r in rounds]


def flat_curve(rounds: list[dict]) -> list[float]:
    return [v for pair in curve(rounds) for v in pair]


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_through_the_production_app(method: str) -> None:
    rounds = run(method=method, compressor="topk:0.1")
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(r["rejected"] == 0 for r in rounds)
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in rounds)
    assert len({r["loss"] for r in rounds}) == 4  # the model moves every round
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in rounds)


@pytest.mark.parametrize("method", ["byz-ef21-sgdm", "byz-ef21"])
def test_ef21_topk_uplink_is_far_below_dense_after_the_reset(method: str) -> None:
    dense = run(method=method, compressor="none")
    sparse = run(method=method, compressor="topk:0.01")
    # round 1: every client sends g = v dense (the EF21 initialisation)
    assert sparse[0]["bytes_up"] == pytest.approx(dense[0]["bytes_up"], rel=0.01)
    for d, s in zip(dense[1:], sparse[1:], strict=True):
        ratio = s["bytes_up"] / d["bytes_up"]
        assert 0.015 < ratio < 0.1, ratio  # 1% values + 1% int32 indices + metadata
    # the identity payload is no bigger than the dense reset
    assert dense[1]["bytes_up"] <= dense[0]["bytes_up"]


def test_br_csgd_compresses_every_round() -> None:
    dense = run(method="br-csgd", compressor="none")
    sparse = run(method="br-csgd", compressor="topk:0.01")
    for d, s in zip(dense, sparse, strict=True):
        assert s["bytes_up"] / d["bytes_up"] < 0.1
    assert sparse[0]["bytes_up"] == sparse[1]["bytes_up"]  # no dense first round


def test_byz_ef21_is_ef21_sgdm_with_eta_one() -> None:
    ef21 = curve(run(method="byz-ef21", compressor="topk:0.1"))
    assert curve(run(method="byz-ef21-sgdm", compressor="topk:0.1", momentum=0.0)) == ef21
    overridden = run(method="byz-ef21-sgdm", compressor="topk:0.1", params={"eta": 1.0})
    assert curve(overridden) == ef21  # --param eta beats momentum (0.9 by default)
    assert curve(run(method="byz-ef21-sgdm", compressor="topk:0.1")) != ef21  # eta 0.1


def test_identity_compressor_reduces_ef21_to_its_uncompressed_methods() -> None:
    # full local batches: RobustMomentum draws no compressor seeds, so its minibatch seeds
    # differ from round 2 on
    full = {"momentum": 0.8, "batch_size": 1000}
    sgdm = flat_curve(run(method="byz-ef21-sgdm", compressor="none", **full))
    momentum = flat_curve(run(method="robust-momentum", **full))
    assert sgdm == pytest.approx(momentum, rel=1e-5)
    ef21 = flat_curve(run(method="byz-ef21", compressor="none"))
    assert ef21 == pytest.approx(flat_curve(run(method="br-csgd", compressor="none")), rel=1e-5)
    assert flat_curve(run(method="byz-ef21-sgdm", compressor="none", momentum=0.8)) != (
        pytest.approx(ef21, rel=1e-3)
    )  # and eta matters


def test_eta_comes_from_momentum_and_param_overrides_it() -> None:
    def strategy(**change: object) -> object:
        return build_strategy(prepare(dataclasses.replace(BASE, **change)))  # type: ignore[arg-type]

    s = strategy(method="byz-ef21-sgdm", compressor="topk:0.1", momentum=0.8)
    assert isinstance(s, ByzEF21SGDM) and s.eta == pytest.approx(0.2)
    assert s.codec.spec == "topk:0.1" and s.lr == 0.5
    s = strategy(method="byz-ef21-sgdm", momentum=0.8, params={"eta": 0.5})
    assert s.eta == 0.5  # type: ignore[attr-defined]
    assert strategy(method="byz-ef21-sgdm", momentum=0.0).eta == 1.0  # type: ignore[attr-defined]
    s = strategy(method="byz-ef21", momentum=0.8)
    assert type(s) is ByzEF21 and s.eta == 1.0
    assert type(strategy(method="br-csgd", compressor="randk:0.1")) is BRCSGD
    assert set(METHODS) <= set(COMPRESSED_METHODS)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"method": "byz-ef21-sgdm", "momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"method": "byz-ef21-sgdm", "params": {"eta": 0}}, "eta must be in"),
        ({"method": "byz-ef21", "params": {"eta": 0.5}}, "no parameter"),
        ({"method": "br-csgd", "params": {"eta": 0.5}}, "no parameter"),
        ({"method": "byz-ef21", "compressor": "zip"}, "unknown compressor"),
        ({"method": "byz-vr-marina-pp", "compressor": "topk:0.01"}, "unbiased"),
        ({"method": "byz-vr-marina-pp", "compressor": "topk:0.1"}, "unbiased"),
    ],
)
def test_bad_configs_fail_before_running(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare(dataclasses.replace(BASE, **change))


@pytest.mark.parametrize("attack", ["sign-flip", "label-flip"])
@pytest.mark.parametrize("method", METHODS)
def test_attacks_run_without_rejecting_honest_nodes(method: str, attack: str) -> None:
    attacked = run(method=method, compressor="topk:0.1", byzantine=2, attack=attack)
    clean = run(method=method, compressor="topk:0.1", byzantine=2, attack="none")
    assert all(r["rejected"] == 0 for r in attacked)  # forged replies are well formed too
    assert all(math.isfinite(r["loss"]) for r in attacked)
    assert curve(attacked) != curve(clean)  # the attack changed the run
    assert [r["bytes_up"] for r in attacked][1:] == [r["bytes_up"] for r in clean][1:]
