"""Fail fast, never silently: every strategy checks the nodes it samples against its rule's
requirement for f before round 1, ``f="auto"`` picks the largest f the sample allows, and a
run ends with one line counting the rounds that were skipped anyway.

A sample too small for the rule used to skip every round (a WARNING each, the model never
changed, exit 0). These tests fail if a strategy sends a single message before refusing, if
the message lacks the numbers or the settings that fix it, if ``auto`` picks an f the rule
cannot run (or a smaller one than it could), or if the skipped rounds go uncounted.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flwr.app import ConfigRecord, Context, Message
from flwr.serverapp.strategy import Strategy

from flwr_byz.aggregators import get_aggregator
from flwr_byz.aggregators.base import accepts
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import (
    BRCSGD,
    ByzEF21,
    ByzEF21SGDM,
    ByzSGD,
    ByzVRMarinaPP,
    Mu2SGD,
    RobustFedAvg,
    RobustMomentum,
    SampleTooSmallError,
)
from flwr_byz.strategies.sample_check import fraction_for, parse_f
from tests.clients.nodes import capture_flwr_log, honest_client, model

from .method_helpers import Network, initial_arrays, run_strategy

TEN = list(range(1, 11))


@pytest.fixture
def flwr_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    return capture_flwr_log(caplog, monkeypatch)


def untouched(msg: Message, context: Context) -> Message:
    raise AssertionError("a message was sent before the sample was checked")


# strategy, nodes connected, what the message must say (numbers, then the knobs)
REFUSED: list[tuple[str, Callable[[], Strategy], int, list[str]]] = [
    (
        "RobustFedAvg",
        lambda: RobustFedAvg(aggregator="nnm+krum", f=2, fraction_train=0.5),
        10,
        [
            "at least 7 replies",
            "samples 5 nodes",
            "fraction-train=0.5 of the 10 connected",
            "fraction-train (fraction_train) >= 0.7",
            "min-train-nodes (min_train_nodes) >= 7",
            'f <= 1 (the most this rule tolerates with 5 replies) or f="auto"',
        ],
    ),
    (
        "RobustFedAvg-bulyan",
        lambda: RobustFedAvg(aggregator="bulyan", f=1, min_train_nodes=3, fraction_train=0.2),
        10,
        ["Bulyan: n >= 4f + 3", "at least 7", "samples 3 nodes", ">= 0.7", ">= 7", "f <= 0"],
    ),
    (
        "RobustFedAvg-too-few-nodes",
        lambda: RobustFedAvg(aggregator="krum", f=3, min_available_nodes=5),
        6,
        ["at least 9", "samples 6 nodes", "connect at least 9 nodes (only 6 are)", "f <= 1"],
    ),
    (
        "RobustMomentum",
        lambda: RobustMomentum(aggregator="krum", f=2, clients_per_round=4),
        10,
        ["at least 7", "samples 4 nodes", "clients-per-round (clients_per_round) >= 7", "f <= 0"],
    ),
    (
        "Mu2SGD",
        lambda: Mu2SGD(aggregator="ctma+trimmedmean", f=3, clients_per_round=5),
        10,
        ["at least 7", "samples 5 nodes", "clients-per-round (clients_per_round) >= 7", "f <= 2"],
    ),
    (
        "BRCSGD",
        lambda: BRCSGD(aggregator="nnm+krum", f=2, compressor="topk:0.1", clients_per_round=6),
        10,
        ["at least 7", "samples 6 nodes", "clients_per_round) >= 7", "f <= 1"],
    ),
    (
        "ByzEF21SGDM",
        lambda: ByzEF21SGDM(aggregator="nnm+krum", f=2, compressor="topk:0.1"),
        6,
        ["at least 7", "at most 6 copies", "connect at least 7 nodes (only 6 are)", "f <= 1"],
    ),
    (
        "ByzEF21",
        lambda: ByzEF21(aggregator="krum", f=2, compressor="topk:0.1", clients_per_round=2),
        6,
        ["at least 7", "at most 6 copies", "connect at least 7 nodes", "f <= 1"],
    ),
    (
        "ByzVRMarinaPP-difference",
        lambda: ByzVRMarinaPP(aggregator="trimmedmean", f=2, clients_per_round=4, f_full=0),
        10,
        ["(difference rounds)", "at least 5", "samples 4 nodes", "clients_per_round) >= 5"],
    ),
    (
        "ByzVRMarinaPP-full",
        lambda: ByzVRMarinaPP(aggregator="krum", f=1, clients_per_round=5, full_round_clients=6),
        10,
        ["(full rounds)", "Krum(f=2)", "at least 7", "samples 6 nodes", "f_full", "f <= 1"],
    ),
    (
        "ByzSGD-workers",
        lambda: ByzSGD(worker_aggregator="mda", f=2, clients_per_round=6),
        10,
        ["needs n_workers >= 3 f_workers + 1 = 7", "samples 6 workers", "clients_per_round) >= 7"],
    ),
    (
        "ByzSGD-quorum",
        lambda: ByzSGD(worker_aggregator="mda", f=1, gradient_quorum=2, clients_per_round=8),
        10,
        ["MDA(f=1", "at least 3", "quorum of 2", "gradient-quorum (gradient_quorum) >= 3"],
    ),
]


@pytest.mark.parametrize(
    "make,connected,parts", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_too_small_a_sample_is_refused_before_round_one(
    make: Callable[[], Strategy], connected: int, parts: list[str]
) -> None:
    strategy = make()
    grid = LocalGrid(TEN[:connected], untouched)
    with pytest.raises(SampleTooSmallError) as info:
        strategy.start(grid=grid, initial_arrays=initial_arrays(), num_rounds=2)
    text = str(info.value)
    for part in parts:
        assert part in text, (part, text)
    if "n_workers" not in text:  # ByzSGD's resilience condition refused it before already
        assert "every round would be skipped" in text


def test_a_sample_that_fits_is_accepted_at_its_boundary() -> None:
    """The fixes the message proposes work: fraction 0.7 of 10 samples 7 = 2f + 3."""
    for kwargs in ({"fraction_train": 0.7}, {"fraction_train": 0.5, "min_train_nodes": 7}):
        strategy = RobustFedAvg(aggregator="nnm+krum", f=2, fraction_evaluate=0.0, **kwargs)
        result = strategy.start(grid=LocalGrid(TEN, honest_client()), initial_arrays=model())
        assert all(m["skipped"] == 0 for m in result.train_metrics_clientapp.values())


@pytest.mark.parametrize("connected", [3, 7, 10, 13, 29, 30, 99])
@pytest.mark.parametrize("need", [1, 2, 3, 7, 10])
def test_fraction_for_is_the_smallest_that_samples_enough(connected: int, need: int) -> None:
    if need > connected:
        return
    fr = fraction_for(need, connected)
    assert int(connected * fr) >= need
    assert int(connected * round(fr - 0.01, 2)) < need or fr <= 0.01


# --- f="auto" --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,fraction,expected",
    [("nnm+krum", 0.5, 1), ("nnm+krum", 1.0, 3), ("bulyan", 1.0, 1), ("trimmedmean", 0.5, 2)],
)
def test_auto_f_in_robust_fedavg(
    flwr_log: pytest.LogCaptureFixture, spec: str, fraction: float, expected: int
) -> None:
    strategy = RobustFedAvg(aggregator=spec, f="auto", fraction_train=fraction)
    strategy.check_sample(LocalGrid(TEN, untouched))
    n = int(10 * fraction)
    assert strategy.aggregator.f == expected
    assert accepts(strategy.aggregator, n) and not accepts(get_aggregator(spec, expected + 1), n)
    lines = [r.getMessage() for r in flwr_log.records if 'f="auto"' in r.getMessage()]
    assert len(lines) == 1 and f"f={expected}" in lines[0] and f"with the {n} replies" in lines[0]


def test_auto_f_in_the_method_strategies() -> None:
    momentum = RobustMomentum(aggregator="krum", f="auto", clients_per_round=6)
    momentum.check_sample(10)
    assert momentum.aggregator.f == 1  # 2f + 3 <= 6
    ef21 = ByzEF21SGDM(aggregator="nnm+trimmedmean", f="auto", compressor="topk:0.1")
    ef21.check_sample(9)
    assert ef21.aggregator.f == 4  # n > 2f over the 9 copies
    # full rounds of 6 with f_full = ceil(f 6 / 5): Krum(f_full) must fit 6 too
    marina = ByzVRMarinaPP(aggregator="krum", f="auto", clients_per_round=5, full_round_clients=6)
    marina.check_sample(10)
    assert marina.aggregator.f == 0  # f = 1 fits 5 (2f + 3), but f_full = 2 needs 7
    sgd = ByzSGD(worker_aggregator="mda", f="auto", clients_per_round=10)
    sgd.check_sample(10)
    assert sgd.f_workers == sgd.aggregator.f == 3  # 3 f + 1 <= 10, MDA(3) on 7 = 2f + 1


def test_auto_f_runs_and_skips_nothing() -> None:
    strategy = RobustMomentum(aggregator="nnm+krum", f="auto", clients_per_round=5, lr=0.1)
    run = run_strategy(strategy, Network(TEN[:8]), 3)
    assert strategy.aggregator.f == 1
    assert all(m["skipped"] == 0 for m in run.metrics)


def test_auto_f_when_nothing_fits_is_refused() -> None:
    strategy = RobustFedAvg(aggregator="krum", f="auto", fraction_train=0.2)
    with pytest.raises(SampleTooSmallError, match=r"needs at least 3 .* samples 2 nodes") as info:
        strategy.check_sample(LocalGrid(TEN, untouched))
    assert "fraction-train (fraction_train) >= 0.3" in str(info.value)
    assert "min-train-nodes (min_train_nodes) >= 3" in str(info.value)
    assert "no f fits 2 replies (the rule needs 3 even with f = 0)" in str(info.value)


def test_f_rejects_other_strings() -> None:
    assert parse_f("auto") == (None, True) and parse_f(2) == (2, False)
    with pytest.raises(ValueError, match='f must be an int >= 0, None or "auto"'):
        RobustFedAvg(aggregator="krum", f="all")  # type: ignore[arg-type]


# --- the skipped-rounds line -------------------------------------------------------------------


def summary_lines(log: pytest.LogCaptureFixture) -> list[str]:
    pattern = re.compile(r"rounds skipped|no round skipped")
    return [r.getMessage() for r in log.records if pattern.search(r.getMessage())]


def test_rounds_skipped_mid_run_are_counted_at_the_end(flwr_log: pytest.LogCaptureFixture) -> None:
    """Krum(f=2) on 7 nodes: the check passes; node 7 drops out from round 2 on, so rounds 2
    and 3 keep the model, each logged, and the run ends with one line counting them."""
    client = honest_client()

    def flaky(msg: Message, context: Context) -> Message | None:
        if int(msg.metadata.dst_node_id) == 7 and msg.content["config"]["server-round"] >= 2:
            return None
        return client(msg, context)

    strategy = RobustFedAvg(aggregator="krum", f=2, fraction_evaluate=0.0)
    result = strategy.start(grid=LocalGrid(TEN[:7], flaky), initial_arrays=model(), num_rounds=3)
    assert [result.train_metrics_clientapp[r]["skipped"] for r in (1, 2, 3)] == [0, 1, 1]
    assert summary_lines(flwr_log) == [
        "RobustFedAvg: 2 of 3 rounds skipped (too few valid replies for Krum(f=2): the model "
        "was kept): rounds 2, 3"
    ]


def test_a_method_strategy_counts_its_skipped_rounds(flwr_log: pytest.LogCaptureFixture) -> None:
    def error_in_round_two(rnd: int, ins: Message, reply: Message) -> Message | None:
        return None if rnd == 2 and int(ins.metadata.dst_node_id) == 1 else reply

    strategy = RobustMomentum(aggregator="krum", f=1, clients_per_round=5, lr=0.1)
    run_strategy(strategy, Network(TEN[:5], tamper=error_in_round_two), 3)
    (line,) = summary_lines(flwr_log)
    assert line.startswith("RobustMomentum: 1 of 3 rounds skipped") and line.endswith("rounds 2")


def test_a_run_without_skips_says_so(flwr_log: pytest.LogCaptureFixture) -> None:
    strategy = RobustFedAvg(aggregator="median", fraction_evaluate=0.0)
    strategy.start(grid=LocalGrid(TEN[:4], honest_client()), initial_arrays=model(), num_rounds=2)
    assert summary_lines(flwr_log) == ["RobustFedAvg: no round skipped (2 of 2 aggregated)"]


def test_the_check_runs_again_for_each_run() -> None:
    """A strategy started twice (two runs) checks each run's nodes."""
    strategy = RobustFedAvg(aggregator="krum", f=2, fraction_evaluate=0.0)
    strategy.start(grid=LocalGrid(TEN[:7], honest_client()), initial_arrays=model(), num_rounds=1)
    with pytest.raises(SampleTooSmallError, match="samples 6 nodes"):
        strategy.start(grid=LocalGrid(TEN[:6], untouched), initial_arrays=model(), num_rounds=1)
    cfg = ConfigRecord({})
    with pytest.raises(SampleTooSmallError):  # round 1 by hand, as the runner calls it
        strategy.configure_train(1, model(), cfg, LocalGrid(TEN[:6], untouched))
