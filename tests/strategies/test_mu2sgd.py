"""Mu2SGD (Dahan & Levy 2024, mu2-SGD) against a brute-force replay in float64.

Runs go through ``strategy.start`` on a LocalGrid of GradientClients (softmax regression in
float64, one persistent Context per node). The brute force is plain torch written from the
algorithm text: per client the STORM estimate ``d = g(x_t; z) + (1 - beta_t)(d - g(x_prev; z))``
(``d = g(x_t; z)`` on its first round; x_prev the point it last saw, z the minibatch of the
batch seed the strategy sent), on the server ``w <- w - lr (t) Agg(d)`` and the AnyTime average
``x <- (1 - gamma_{t+1}) x + gamma_{t+1} w``, ``beta_t = max(1/t, floor)``,
``gamma_t = max(2/(t+1), floor)``. The aggregators are re-implemented by hand (NumPy median;
CTMA: the m - f rows closest to the median, averaged).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from flwr.app import Error, Message

from flwr_byz.clients.state import load_vector
from flwr_byz.strategies import Mu2SGD
from flwr_byz.strategies.mu2sgd import anytime_weight
from tests.clients.gradient_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.strategies.method_helpers import (
    Exchange,
    Network,
    Run,
    config_of,
    initial64,
    minibatch,
    model_grad,
    network64,
    replace_arrays,
    run_strategy,
    vec,
)

NODES = [41, 42, 43, 44, 45]
LR = 0.3
BATCH = 4
SEED = 5
TOL = dict(rtol=1e-9, atol=1e-11)
WATCH = ("w", "x")


def make(**kwargs) -> Mu2SGD:
    options = dict(aggregator="mean", lr=LR, batch_size=BATCH, seed=SEED)
    options.update(kwargs)
    return Mu2SGD(**options)


def start(strategy: Mu2SGD, net: Network, rounds: int) -> Run:
    return run_strategy(strategy, net, rounds, initial=initial64(), watch=WATCH)


# --- the aggregators by hand -----------------------------------------------------------------


def mean_rule(rows: torch.Tensor) -> torch.Tensor:
    return rows.sum(dim=0) / rows.shape[0]


def median_rule(rows: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.median(rows.numpy(), axis=0))


def ctma_median_rule(f: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """CTMA over the median: the m - f rows nearest the coordinate-wise median, averaged."""

    def rule(rows: torch.Tensor) -> torch.Tensor:
        m = rows.shape[0]
        if m <= f:
            raise ValueError("CTMA needs m > f")
        anchor = median_rule(rows)
        dist = [float(((row - anchor) ** 2).sum()) for row in rows]
        keep = sorted(range(m), key=lambda i: (dist[i], i))[: m - f]
        return torch.stack([rows[i] for i in keep]).sum(dim=0) / len(keep)

    return rule


# --- the brute-force replay ----------------------------------------------------------------


def node_of(ex: Exchange) -> int:
    return int(ex.ins.metadata.dst_node_id)


def untampered(ex: Exchange, msg: Message) -> bool:
    return msg is ex.honest


@dataclass
class Replay:
    """What the brute force saw: per round the reply of each node, the server's w and x."""

    d: list[dict[int, torch.Tensor]] = field(default_factory=list)
    w: list[torch.Tensor] = field(default_factory=list)  # w_{t+1} after round t
    x: list[torch.Tensor] = field(default_factory=list)
    last_point: dict[int, torch.Tensor] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)


def replay(
    run: Run,
    net: Network,
    rule: Callable[[torch.Tensor], torch.Tensor],
    lr: float = LR,
    alpha_lr: bool = False,
    floor: float = 0.0,
    accept: Callable[[Exchange, Message], bool] = untampered,
) -> Replay:
    """Walk the rounds with mu2-SGD in float64; assert every point sent, config, honest reply,
    metric, ``strategy.w`` and the returned model ``x``."""
    out = Replay()
    w = x = run.x0.clone()
    clients: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # node -> (x_prev, d)
    for k, exchanges in enumerate(run.rounds):
        t = k + 1
        beta = max(1.0 / t, floor)
        ds: dict[int, torch.Tensor] = {}
        for ex in exchanges:
            cfg = config_of(ex.ins)
            assert cfg["op"] == "double" and cfg["batch-size"] == BATCH
            assert cfg["beta"] == pytest.approx(beta, rel=1e-15)
            torch.testing.assert_close(vec(ex.ins.content["arrays"]), x, **TOL)
            node = node_of(ex)
            data_x, data_y = net.data[node]
            idx = minibatch(len(data_y), BATCH, cfg["batch-seed"])
            g = model_grad(x, data_x[idx], data_y[idx])
            if node in clients:
                x_prev, d_prev = clients[node]
                d = g + (1.0 - beta) * (d_prev - model_grad(x_prev, data_x[idx], data_y[idx]))
            else:
                d = g
            clients[node] = (x.clone(), d)
            ds[node] = d
            torch.testing.assert_close(vec(ex.honest.content["grad"]), d, **TOL)
        rows = [vec(m.content["grad"]) for ex in exchanges for m in ex.sent if accept(ex, m)]
        try:
            d_hat = rule(torch.stack(rows)) if rows else None
        except ValueError:
            d_hat = None
        gamma = max(2.0 / (t + 2), floor)
        if d_hat is not None:
            w = w - lr * (t if alpha_lr else 1.0) * d_hat
            x = (1.0 - gamma) * x + gamma * w
        metrics = run.metrics[k]
        assert metrics["beta"] == pytest.approx(beta, rel=1e-15)
        assert metrics["gamma"] == pytest.approx(gamma, rel=1e-15)
        assert metrics["sampled"] == len(exchanges)
        assert metrics["skipped"] == int(d_hat is None)
        assert metrics["accepted"] == len(rows)
        torch.testing.assert_close(run.state[k]["w"], w, **TOL)
        torch.testing.assert_close(run.state[k]["x"], x, **TOL)
        torch.testing.assert_close(run.arrays[k], x, **TOL)
        out.d.append(ds)
        out.w.append(w.clone())
        out.x.append(x.clone())
        out.skipped.append(int(d_hat is None))
    out.last_point = {n: xp for n, (xp, _) in clients.items()}
    return out


def sampled(run: Run) -> list[set[int]]:
    return [{node_of(ex) for ex in exchanges} for exchanges in run.rounds]


# --- 1. one honest client: the single-machine recursion ------------------------------------------


def single_machine(
    run: Run, data: tuple[torch.Tensor, torch.Tensor], lr: float, alpha_lr: bool, floor: float
) -> None:
    """mu2-SGD on one machine, written out directly (no per-node bookkeeping)."""
    X, Y = data
    w = x = run.x0.clone()
    x_prev = d = None
    for k, exchanges in enumerate(run.rounds):
        t = k + 1
        (ex,) = exchanges
        cfg = config_of(ex.ins)
        idx = minibatch(len(Y), BATCH, cfg["batch-seed"])
        g = model_grad(x, X[idx], Y[idx])
        beta_t = max(1.0 / t, floor)
        d = g if d is None else g + (1.0 - beta_t) * (d - model_grad(x_prev, X[idx], Y[idx]))
        torch.testing.assert_close(vec(ex.sent[0].content["grad"]), d, **TOL)
        x_prev = x
        w = w - lr * (t if alpha_lr else 1) * d
        gamma = max(2.0 / (t + 2), floor)
        x = (1.0 - gamma) * x + gamma * w
        torch.testing.assert_close(run.arrays[k], x, **TOL)
        torch.testing.assert_close(run.state[k]["w"], w, **TOL)
        assert run.metrics[k]["beta"] == pytest.approx(beta_t, rel=1e-15)
        assert run.metrics[k]["gamma"] == pytest.approx(gamma, rel=1e-15)


@pytest.mark.parametrize(
    ("alpha_lr", "floor"), [(False, 0.0), (True, 0.0), (False, 0.01), (False, 0.3)]
)
def test_one_client_is_the_single_machine_recursion(alpha_lr: bool, floor: float) -> None:
    rounds = 8
    lr = 0.05 if alpha_lr else LR
    net = network64([7])
    run = start(make(alpha_lr=alpha_lr, floor=floor, lr=lr), net, rounds)
    single_machine(run, net.data[7], lr, alpha_lr, floor)
    replay(run, net, mean_rule, lr=lr, alpha_lr=alpha_lr, floor=floor)  # the same, per node
    betas = [m["beta"] for m in run.metrics]
    gammas = [m["gamma"] for m in run.metrics]
    if floor == 0.3:  # the floor bites on both sequences
        assert betas[-1] == 0.3 and 1 / 8 < 0.3
        assert gammas[-1] == 0.3 and 2 / 10 < 0.3
    else:
        assert betas == pytest.approx([1 / t for t in range(1, rounds + 1)])
        assert gammas == pytest.approx([2 / (t + 2) for t in range(1, rounds + 1)])
    models = [run.x0, *run.arrays]
    assert all(not torch.allclose(a, b, atol=1e-6) for a, b in itertools.pairwise(models))


# --- 2. the AnyTime average -------------------------------------------------------------------


@pytest.mark.parametrize(("aggregator", "alpha_lr"), [("mean", False), ("median", True)])
def test_x_is_the_t_weighted_average_of_the_ws(aggregator: str, alpha_lr: bool) -> None:
    rounds = 7
    net = network64(NODES[:3])
    run = start(make(aggregator=aggregator, alpha_lr=alpha_lr, lr=0.1), net, rounds)
    ws = [run.x0] + [s["w"] for s in run.state]  # w_1 = x^0, then w_2, ..., w_{T+1}
    for k in range(rounds):
        t = k + 2  # after round k + 1 the strategy holds w_t and x_t
        num = sum(s * ws[s - 1] for s in range(1, t + 1))
        want = num / (t * (t + 1) / 2)
        torch.testing.assert_close(run.state[k]["x"], want, rtol=0, atol=1e-10)
        torch.testing.assert_close(run.arrays[k], want, rtol=0, atol=1e-10)
        assert not torch.allclose(want, ws[t - 1], atol=1e-6)  # x is not the last w
    assert all(s["x"].dtype == torch.float64 for s in run.state)


def test_anytime_weight_values() -> None:
    assert anytime_weight(1) == 1.0
    assert anytime_weight(2) == pytest.approx(2 / 3)
    assert anytime_weight(3) == 0.5
    assert anytime_weight(9) == pytest.approx(0.2)
    assert anytime_weight(9, 0.3) == 0.3
    assert anytime_weight(3, 0.3) == 0.5  # the floor is a lower bound only
    assert anytime_weight(199, 0.01) == 0.01
    assert anytime_weight(1000) == pytest.approx(2 / 1001)


# --- 3. several clients, robust rules ---------------------------------------------------------


def sign_flip(node: int, scale: float = -8.0):
    """Tamper: ``node`` sends ``scale * d`` (the rest unchanged)."""

    def tamper(server_round: int, ins: Message, reply: Message) -> Message:
        if int(ins.metadata.dst_node_id) != node:
            return reply
        return replace_arrays(reply, lambda rec, key, a: scale * a, ins)

    return tamper


def accept_all(ex: Exchange, msg: Message) -> bool:
    return True


@pytest.mark.parametrize(
    ("aggregator", "rule", "f"),
    [("median", median_rule, None), ("ctma+median", ctma_median_rule(1), 1)],
)
def test_several_clients_match_the_brute_force(aggregator, rule, f) -> None:
    net = network64(NODES, tamper=sign_flip(NODES[2]))
    run = start(make(aggregator=aggregator, f=f), net, 5)
    assert all(s == set(NODES) for s in sampled(run))
    got = replay(run, net, rule, accept=accept_all)  # the flipped rows are aggregated too
    assert got.skipped == [0] * 5
    # the replay can tell the rules apart: the plain mean of the same rows gives another w
    rows = torch.stack([vec(m.content["grad"]) for ex in run.rounds[-1] for m in ex.sent])
    assert not torch.allclose(rule(rows), mean_rule(rows), atol=1e-4)
    if f == 1:
        assert not torch.allclose(rule(rows), median_rule(rows), atol=1e-6)


# --- 4. partial participation ---------------------------------------------------------------


def test_partial_participation_clients_correct_from_their_own_last_point() -> None:
    rounds = 7
    net = network64(NODES)
    strategy = make(aggregator="median", clients_per_round=2, seed=SEED)
    run = start(strategy, net, rounds)
    rounds_of = sampled(run)
    assert all(len(s) == 2 for s in rounds_of)
    got = replay(run, net, median_rule)
    # a node that missed the previous round: its correction is at the point it last saw,
    # not at the server's previous x (that would give another d)
    missed = [
        (k, n)
        for k in range(2, rounds)
        for n in rounds_of[k]
        if n not in rounds_of[k - 1] and any(n in rounds_of[j] for j in range(k - 1))
    ]
    assert missed, rounds_of
    for k, node in missed:
        ex = next(e for e in run.rounds[k] if node_of(e) == node)
        cfg = config_of(ex.ins)
        data_x, data_y = net.data[node]
        idx = minibatch(len(data_y), BATCH, cfg["batch-seed"])
        last = max(j for j in range(k) if node in rounds_of[j])
        prev_d = got.d[last][node]
        beta = 1.0 / (k + 1)
        x_server_prev = got.x[k - 2]  # the point sent in round k (0-based k - 1)
        wrong = model_grad(got.x[k - 1], data_x[idx], data_y[idx]) + (1 - beta) * (
            prev_d - model_grad(x_server_prev, data_x[idx], data_y[idx])
        )
        assert not torch.allclose(vec(ex.honest.content["grad"]), wrong, atol=1e-6)
    key = {"state-key": strategy.state_key}
    for node, point in got.last_point.items():  # the clients keep the point they last saw
        torch.testing.assert_close(load_vector(net.contexts[node], key, "double-x"), point)
    assert set(got.last_point) <= set(NODES)


# --- 5. rejections and skipped steps -----------------------------------------------------------


def _nan(ins: Message, reply: Message) -> Message:
    return replace_arrays(reply, lambda rec, key, a: np.full_like(a, np.nan), ins)


def _error(ins: Message, reply: Message) -> Message:
    return Message(Error(code=2, reason="crash"), reply_to=ins)


BAD = {"non-finite": _nan, "error-reply": _error}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_replies_are_rejected_and_counted(reason: str) -> None:
    hit: set[int] = set()

    def tamper(server_round: int, ins: Message, reply: Message) -> Message:
        if server_round in hit:
            return reply
        hit.add(server_round)
        return BAD[reason](ins, reply)

    net = network64(NODES, tamper=tamper)
    run = start(make(aggregator="median"), net, 4)
    for m in run.metrics:
        assert m["rejected"] == 1 and m[f"rejected-{reason}"] == 1
        assert m["accepted"] == len(NODES) - 1 and m["sampled"] == len(NODES)
    got = replay(run, net, median_rule)
    assert got.skipped == [0] * 4


def test_a_rule_that_cannot_run_skips_the_step() -> None:
    """ctma+median with f=1 needs two replies; in round 2 one is NaN and one an error."""
    nodes = NODES[:3]

    def tamper(server_round: int, ins: Message, reply: Message) -> Message:
        node = int(ins.metadata.dst_node_id)
        if server_round == 2 and node == nodes[0]:
            return _nan(ins, reply)
        if server_round == 2 and node == nodes[1]:
            return _error(ins, reply)
        return reply

    net = network64(nodes, tamper=tamper)
    run = start(make(aggregator="ctma+median", f=1), net, 4)
    m = run.metrics[1]
    assert m["skipped"] == 1 and m["accepted"] == 1 and m["rejected"] == 2
    assert m["rejected-non-finite"] == 1 and m["rejected-error-reply"] == 1
    assert torch.equal(run.state[1]["w"], run.state[0]["w"])
    assert torch.equal(run.state[1]["x"], run.state[0]["x"])
    assert torch.equal(run.arrays[1], run.arrays[0])
    assert [r["skipped"] for r in run.metrics] == [0, 1, 0, 0]
    # the next rounds go on from the unchanged w, x with t = 3, 4 (beta 1/3, 1/4)
    got = replay(run, net, ctma_median_rule(1))
    assert got.skipped == [0, 1, 0, 0]
    assert not torch.allclose(run.arrays[2], run.arrays[1])


def test_aggregate_without_configure_returns_nothing() -> None:
    assert make().aggregate_train(1, []) == (None, None)


# --- 6. constructor -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"floor": 1.0}, {"floor": -0.01}, {"floor": 1.5}, {"floor": math.nan}, {"lr": 0.0}],
)
def test_constructor_rejects(kwargs) -> None:
    with pytest.raises(ValueError):
        make(**kwargs)


def test_constructor_keeps_the_options() -> None:
    s = make(floor=0.01, alpha_lr=True)
    assert s.floor == 0.01 and s.alpha_lr is True
    assert s.options()["floor"] == 0.01 and s.options()["alpha_t step"] is True
    assert make(floor=0.0).floor == 0.0 and make(floor=0.99).floor == 0.99


# --- 7. through the runner ----------------------------------------------------------------------


def test_runner_method_mu2sgd() -> None:
    from flwr_byz.simulations.config import ExperimentConfig
    from flwr_byz.simulations.engines import run_experiments
    from flwr_byz.simulations.methods import build_strategy
    from flwr_byz.simulations.runner import prepare

    base = dict(
        method="mu2sgd",
        dataset="digits",
        model="logreg",
        clients=6,
        byzantine=1,
        attack="sign-flip",
        rounds=5,
        batch_size=4,
        aggregator="ctma+median",
    )
    plain = ExperimentConfig(**base)
    alpha = ExperimentConfig(**base, params={"alpha_lr": True})
    built = build_strategy(prepare(alpha))
    assert isinstance(built, Mu2SGD) and built.alpha_lr is True
    assert build_strategy(prepare(plain)).alpha_lr is False
    results = run_experiments([plain, alpha], engine="local")
    for result in results:
        assert len(result.rounds) == 5
        assert math.isfinite(result.accuracy) and 0.0 <= result.accuracy <= 1.0
        assert all(math.isfinite(r.loss) for r in result.rounds)
    assert results[0].accuracy != results[1].accuracy or [r.loss for r in results[0].rounds] != [
        r.loss for r in results[1].rounds
    ]


def test_a_restart_starts_the_clients_fresh() -> None:
    net = network64(NODES[:3])
    strategy = make(aggregator="median")
    first = start(strategy, net, 3)
    second = start(strategy, net, 3)  # same seed, new state-key: the same run again
    for a, b in zip(first.arrays, second.arrays, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    replay(second, net, median_rule)


# --- ShiftBack ------------------------------------------------------------------------------------


def test_shift_back_target_sends_the_model_back_to_x0() -> None:
    from flwr.app import MetricRecord, RecordDict

    from flwr_byz.protocol.records import unflatten

    strategy = make(aggregator="mean", lr=0.5)

    def tamper(server_round: int, ins: Message, reply: Message) -> Message:
        if server_round < 3:
            return reply
        target = strategy.attack_surface().shift_back_target(None)
        content = RecordDict(
            {"grad": unflatten(target, strategy.layout), "metrics": MetricRecord({})}
        )
        return Message(content, reply_to=ins)

    net = network64(NODES[:3], tamper=tamper)
    run = start(strategy, net, 3)
    assert not torch.allclose(run.arrays[1], run.x0, atol=1e-3)  # the model had moved
    torch.testing.assert_close(run.arrays[2], run.x0, rtol=0, atol=1e-10)
