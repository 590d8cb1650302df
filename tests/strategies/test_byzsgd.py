"""ByzSGD (Byzantine workers and Byzantine parameter servers) against brute-force references.

The strategy is driven against GradientClient nodes on a LocalGrid (the softmax problem of
``method_helpers``; float64 where results are compared exactly). ``drive`` calls
``configure_train`` / ``aggregate_train`` by hand so every step's messages, ``pulled`` and the
replicas before and after the step can be checked; ``run_strategy`` goes through
``Strategy.start``. The references are plain torch/NumPy written from the algorithm text:
full-batch gradient descent, MDA as "the mean of some q_w - f_w of the gradients", the DMC
gather as a NumPy coordinate median of own + Byzantine + 2 of the 3 other honest replicas.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Error, Message

from flwr_byz.attacks import get_server_attack
from flwr_byz.methods.byzsgd import diameter
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import ByzSGD
from tests.clients.gradient_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.strategies.method_helpers import (
    CLASSES,
    FEATURES,
    Exchange,
    Network,
    config_of,
    initial64,
    initial_arrays,
    model_grad,
    network64,
    replace_arrays,
    run_strategy,
    vec,
)

NODES = [11, 12, 13, 14, 15, 16, 17]
SERVER_ATTACK_NAMES = ["perturb", "negate", "random:scale=1e3", "stale", "stall", "non-finite"]


def make(**kwargs) -> ByzSGD:
    options = dict(lr=0.3, batch_size=4, seed=3)
    options.update(kwargs)
    return ByzSGD(**options)


@dataclass
class Step:
    """One step driven by hand."""

    t: int
    messages: dict[int, Message]  # node -> instruction
    pulled: dict[int, list[int]]
    before: torch.Tensor  # replicas when the models were sent
    after: torch.Tensor  # replicas after the step (after the gather on gather steps)
    model: torch.Tensor  # the returned global model
    metrics: dict
    exchanges: list[Exchange]


def drive(strategy: ByzSGD, net: Network, rounds: int, initial: ArrayRecord | None = None):
    """``rounds`` steps of configure_train / send / aggregate_train (as ``start`` does)."""
    arrays = initial_arrays() if initial is None else initial
    steps: list[Step] = []
    for r in range(1, rounds + 1):
        messages = list(strategy.configure_train(r, arrays, ConfigRecord({}), net.grid))
        assert strategy.replicas is not None
        before = strategy.replicas.clone()
        pulled = {n: list(s) for n, s in strategy.pulled.items()}
        replies = list(net.grid.send_and_receive(messages))
        arrays, metrics = strategy.aggregate_train(r, replies)
        assert arrays is not None and metrics is not None
        by_node = {int(m.metadata.dst_node_id): m for m in messages}
        steps.append(
            Step(
                strategy.t,
                by_node,
                pulled,
                before,
                strategy.replicas.clone(),
                vec(arrays),
                dict(metrics),
                net.rounds[-1],
            )
        )
    return steps


def pulled_models(msg: Message) -> list[torch.Tensor]:
    """The ``model-<j>`` records of an instruction, in order (and nothing else)."""
    keys = sorted(k for k in msg.content.array_records if k.startswith("model-"))
    assert keys == [f"model-{j}" for j in range(len(keys))]
    assert set(msg.content.array_records) == set(keys)
    return [vec(msg.content.array_records[k]) for k in keys]


def grads_of(exchanges: list[Exchange]) -> torch.Tensor:
    """The gradients the nodes sent back (every exchange answered honestly)."""
    return torch.stack([vec(m.content["grad"]) for ex in exchanges for m in ex.sent])


def full_loss(point: torch.Tensor, net: Network, nodes: list[int]) -> float:
    """Mean cross-entropy of the softmax model ``point`` over the nodes' pooled data."""
    x = torch.cat([net.data[n][0] for n in nodes]).double()
    y = torch.cat([net.data[n][1] for n in nodes])
    w = point.double()[: CLASSES * FEATURES].reshape(CLASSES, FEATURES)
    b = point.double()[CLASSES * FEATURES :]
    return float(F.cross_entropy(x @ w.T + b, y))


def np_median(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.from_numpy(np.median(torch.stack(rows).double().numpy(), axis=0))


def started(strategy: ByzSGD, initial: ArrayRecord | None = None) -> ByzSGD:
    """``strategy`` after its first configure_train on 4 silent nodes (t = 1)."""
    grid = LocalGrid(4, lambda msg, context: None)
    arrays = initial_arrays() if initial is None else initial
    list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    return strategy


# --- 1. constructor, quorums, gather period -----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_servers": 4, "f_servers": 1}, r"ByzSGD needs n_servers >= 3 f_servers \+ 2 = 5 "),
        ({"n_servers": 7, "f_servers": 2}, r"n_servers >= 3 f_servers \+ 2 = 8 .*got n_servers=7"),
        ({"n_servers": 2, "f_servers": 1}, r"= 5 to tolerate f_servers=1"),
        ({"n_servers": 0, "f_servers": 0}, "need n_servers >= 1"),
        ({"n_servers": 5, "f_servers": -1}, "f_servers >= 0"),
        ({"worker_rule": "mean"}, "worker_rule must be one of"),
        ({"gather_period": 0}, "gather_period must be an int >= 1"),
        ({"gather_period": True}, "gather_period must be an int >= 1"),
        ({"gradient_quorum": 0}, "gradient_quorum must be >= 1"),
        ({"server_attack": "bogus"}, "unknown server attack 'bogus'"),
        ({"server_attack": "random:foo=1"}, "unknown parameter 'foo'"),
        ({"lr": 0.0}, "lr > 0"),
        ({"lr": -1.0, "gather_period": 2}, "lr must be > 0"),
        ({"lipschitz": 0.0}, "lipschitz > 0"),
    ],
)
def test_constructor_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ByzSGD(**kwargs)


@pytest.mark.parametrize(("n", "f"), [(1, 0), (2, 0), (5, 1), (6, 1), (8, 2), (11, 3)])
def test_valid_server_quorums(n: int, f: int) -> None:
    s = ByzSGD(n_servers=n, f_servers=f)
    assert s.honest == list(range(n - f)) and s.byzantine == list(range(n - f, n))


@pytest.mark.parametrize(
    ("nodes", "f", "per_round", "message"),
    [
        (6, 2, None, r"ByzSGD needs n_workers >= 3 f_workers \+ 1 = 7 .* got 6"),
        (7, 2, 6, r"ByzSGD needs n_workers >= 3 f_workers \+ 1 = 7 .* got 6"),
        (3, 1, None, r"n_workers >= 3 f_workers \+ 1 = 4 .*f_workers=1"),
    ],
)
def test_worker_quorum_is_checked_at_the_first_step(nodes, f, per_round, message) -> None:
    strategy = ByzSGD(f=f, clients_per_round=per_round)  # the constructor cannot know n_w
    grid = LocalGrid(nodes, lambda msg, context: None)
    with pytest.raises(ValueError, match=message):
        strategy.configure_train(1, initial_arrays(), ConfigRecord({}), grid)


def test_enough_workers_pass_the_quorum_check() -> None:
    strategy = ByzSGD(f=2)
    grid = LocalGrid(7, lambda msg, context: None)
    assert len(list(strategy.configure_train(1, initial_arrays(), ConfigRecord({}), grid))) == 7


@pytest.mark.parametrize(
    ("lr", "lipschitz", "period"),
    [(0.05, 1.0, 6), (1.0, 1.0, 1), (0.05, 2.0, 3), (0.1, 1.0, 3), (0.01, 1.0, 33), (0.4, 1.0, 1)],
)
def test_default_gather_period(lr: float, lipschitz: float, period: int) -> None:
    assert ByzSGD(lr=lr, lipschitz=lipschitz).period == period
    assert period == max(1, math.floor(1 / (3 * lipschitz * lr)))
    assert ByzSGD(lr=lr, lipschitz=lipschitz, gather_period=4).period == 4


# --- 2. exactness without any Byzantine behaviour ---------------------------------------------


@pytest.mark.parametrize(
    ("servers", "aggregator", "period"),
    [((5, 1), "mean", None), ((5, 1), "mda", 2), ((1, 0), "mean", None), ((1, 0), "mda", 3)],
)
def test_no_byzantine_is_full_batch_gradient_descent(servers, aggregator, period) -> None:
    n_servers, f_servers = servers
    nodes = NODES[:5]
    net = network64(nodes)
    rounds, lr = 6, 0.4
    strategy = ByzSGD(
        n_servers=n_servers,
        f_servers=f_servers,
        server_attack="none",
        worker_aggregator=aggregator,
        lr=lr,
        batch_size=0,
        gradient_quorum=len(nodes),
        gather_period=period,
        seed=1,
    )
    run = run_strategy(strategy, net, rounds, initial=initial64(), watch=("replicas",))
    x = run.x0.clone()
    for k in range(rounds):
        grads = [model_grad(x, *net.data[n]) for n in nodes]
        honest = {
            int(ex.ins.metadata.dst_node_id): vec(ex.honest.content["grad"]) for ex in run.rounds[k]
        }
        for n, g in zip(nodes, grads, strict=True):
            torch.testing.assert_close(honest[n], g, rtol=1e-9, atol=1e-12)
        x = x - lr * torch.stack(grads).mean(dim=0)
        torch.testing.assert_close(run.arrays[k], x, rtol=1e-9, atol=1e-12)
        replicas = run.state[k]["replicas"]
        assert replicas is not None and replicas.shape == (n_servers, x.numel())
        for row in replicas:  # every replica, the Byzantine one included, is x
            torch.testing.assert_close(row, x, rtol=1e-9, atol=1e-12)
        assert run.metrics[k]["diameter"] == pytest.approx(0.0, abs=1e-12)
        assert run.metrics[k]["quorum"] == len(nodes) and run.metrics[k]["skipped"] == 0
    assert not torch.allclose(x, run.x0, atol=1e-3)  # it did move


# --- 3. random quorums: replicas drift apart, gathers pull them together -------------------------


def test_random_quorums_spread_the_replicas_and_the_gather_contracts() -> None:
    net = network64(NODES)
    lr, period, rounds = 0.3, 3, 9
    strategy = make(f=2, lr=lr, gather_period=period)  # MDA f_w=2, quorums of 5 of 7
    steps = drive(strategy, net, rounds, initial=initial64())
    prev_diameter = 0.0
    before_gathers = []
    for step in steps:
        m = step.metrics
        assert m["sampled"] == 7 and m["quorum"] == 5 and m["skipped"] == 0
        assert m["accepted"] == 7 and m["rejected"] == 0
        grads = grads_of(step.exchanges)
        gather = step.t % period == 0
        assert m["gather"] == int(gather)
        # after the server step (and before the gather): the growth bound
        spread = m["diameter-before-gather"] if gather else m["diameter"]
        assert spread > 1e-6  # the subsets differ: the replicas differ
        assert spread <= prev_diameter + lr * diameter(grads) + 1e-12
        if gather:
            before_gathers.append(spread)
            assert m["diameter"] < spread  # C4.2: the gather contracts
        else:
            assert "diameter-before-gather" not in m
            # every replica (the Byzantine one too) stepped by lr * MDA of a quorum:
            # the mean of some q_w - f_w = 3 of the 7 gradients
            means = torch.stack(
                [grads[list(c)].mean(dim=0) for c in itertools.combinations(range(7), 3)]
            )
            for s in range(5):
                update = (step.before[s] - step.after[s]) / lr
                assert float((means - update).norm(dim=1).min()) < 1e-9, (step.t, s)
        assert m["diameter"] == pytest.approx(diameter(step.after[:4]), rel=1e-12)
        prev_diameter = m["diameter"]
    assert [(t, b) for t, b, _ in strategy.diameters] == [
        (t, pytest.approx(b, rel=1e-12)) for t, b in zip((3, 6, 9), before_gathers, strict=True)
    ]
    assert all(after < before for _, before, after in strategy.diameters)


# --- 4. the gather (DMC) on hand-set replicas -------------------------------------------------


def hand_set(strategy: ByzSGD, seed: int = 0) -> torch.Tensor:
    """Random replicas (float32), honest rows spread, set on the started strategy."""
    g = torch.Generator().manual_seed(seed)
    assert strategy.replicas is not None
    strategy.replicas = torch.randn(strategy.replicas.shape, generator=g)
    return strategy.replicas.clone()


def check_byzantine_state(strategy: ByzSGD) -> None:
    new_honest = [strategy.replicas[s] for s in strategy.honest]
    for s in strategy.byzantine:
        torch.testing.assert_close(strategy.replicas[s].double(), np_median(new_honest))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gather_is_the_median_of_own_byzantine_and_two_other_honest(seed: int) -> None:
    strategy = started(make(server_attack="random:scale=1e6", seed=seed))
    old = hand_set(strategy, seed)
    out = strategy.gather()
    assert out["gather"] == 1 and out["dropped-models"] == 0
    assert out["diameter-before-gather"] == pytest.approx(diameter(old[:4]))
    chosen = set()
    for s in range(4):
        byz = strategy.server_attack(old[4], strategy.x0, -(s + 1), strategy.t)
        assert float(byz.norm()) > 1e5  # a huge model was in the vote
        others = [o for o in range(4) if o != s]
        candidates = {
            pair: np_median([old[s], byz, old[pair[0]], old[pair[1]]])
            for pair in itertools.combinations(others, 2)
        }
        new = strategy.replicas[s].double()
        hits = [p for p, c in candidates.items() if torch.allclose(new, c, rtol=0, atol=1e-6)]
        assert hits, s
        chosen.add(hits[0])
        # every coordinate within the old honest models' range
        lo, hi = old[:4].min(dim=0).values, old[:4].max(dim=0).values
        assert bool((strategy.replicas[s] >= lo).all() and (strategy.replicas[s] <= hi).all())
        # the candidates really differ (the brute force can tell the pairs apart)
        assert all(
            not torch.allclose(a, b, atol=1e-6)
            for a, b in itertools.combinations(candidates.values(), 2)
        )
    check_byzantine_state(strategy)
    after = diameter(strategy.honest_models())
    assert strategy.diameters == [(1, out["diameter-before-gather"], after)]
    assert after < out["diameter-before-gather"]


def test_random_server_equivocates_between_honest_servers_in_the_gather() -> None:
    strategy = started(make(server_attack="random:scale=1e6"))
    hand_set(strategy, 3)
    sent = [strategy.sent_by(4, -(s + 1)) for s in strategy.honest]
    for a, b in itertools.combinations(sent, 2):
        assert not torch.allclose(a, b)


def _wrong_shape(own, x0, recipient, step):
    return torch.zeros(own.numel() + 1)


@pytest.mark.parametrize(
    ("attack", "dropped"), [("non-finite", 4), (_wrong_shape, 4), ("stall", 0)]
)
def test_gather_drops_unusable_models(attack, dropped: int) -> None:
    strategy = started(make())
    strategy.server_attack = get_server_attack(attack)
    old = hand_set(strategy, 5)
    torch.testing.assert_close(  # the observer drops it too: the median of the 4 honest
        strategy.observed_model().double(), np_median([old[s] for s in range(4)])
    )
    out = strategy.gather()
    assert out["dropped-models"] == dropped  # once per honest receiver
    # what is left of the q_ps = 4 models: the four honest ones, the same for everyone
    want = np_median([old[s] for s in range(4)])
    for s in range(4):
        torch.testing.assert_close(strategy.replicas[s].double(), want)
    assert bool(torch.isfinite(strategy.replicas).all())
    assert diameter(strategy.honest_models()) == pytest.approx(0.0, abs=1e-6)
    check_byzantine_state(strategy)


def test_a_wrong_shape_server_model_does_not_crash_the_scatter() -> None:
    net = Network(NODES[:4])
    strategy = make(server_attack=_wrong_shape, gather_period=2)
    steps = drive(strategy, net, 2)
    assert all(bool(torch.isfinite(step.after[:4]).all()) for step in steps)
    assert steps[1].metrics["dropped-models"] == 4


def test_observed_model_is_the_median_of_the_finite_models_presented() -> None:
    strategy = started(make(server_attack="non-finite"))
    old = hand_set(strategy, 8)
    torch.testing.assert_close(
        strategy.observed_model().double(), np_median([old[s] for s in range(4)])
    )
    strategy = started(make(server_attack="negate"))
    old = hand_set(strategy, 8)
    torch.testing.assert_close(strategy.observed_model().double(), np_median([*old[:4], -old[4]]))
    arrivals = strategy.arrivals(7)
    assert arrivals[0][0] == 4 and sorted(s for s, _ in arrivals[1:]) == [0, 1, 2, 3]
    without_2 = [s for s, _ in strategy.arrivals(7, exclude=2)]
    assert without_2[0] == 4 and sorted(without_2) == [0, 1, 3, 4]


# --- 5. robustness to Byzantine servers and workers --------------------------------------------


def byzantine_workers(sign_flip: int, nan: int):
    """Tamper: ``sign_flip`` sends -8 g, ``nan`` sends NaN."""

    def tamper(server_round: int, ins: Message, reply: Message) -> Message:
        node = int(ins.metadata.dst_node_id)
        if node == sign_flip:
            return replace_arrays(reply, lambda rec, key, a: -8.0 * a, ins)
        if node == nan:
            return replace_arrays(reply, lambda rec, key, a: np.full_like(a, np.nan), ins)
        return reply

    return tamper


@pytest.mark.parametrize("rule", ["median", "filter"])
@pytest.mark.parametrize("attack", SERVER_ATTACK_NAMES)
def test_byzantine_servers_and_workers(attack: str, rule: str) -> None:
    rounds = 10
    net = Network(NODES, tamper=byzantine_workers(NODES[1], NODES[4]))
    honest_nodes = [n for n in NODES if n not in (NODES[1], NODES[4])]
    strategy = make(
        server_attack=attack, worker_rule=rule, f=2, lr=0.3, gather_period=2, batch_size=10
    )
    run = run_strategy(strategy, net, rounds, watch=("replicas",))
    start = full_loss(run.x0, net, honest_nodes)
    for k in range(rounds):
        replicas = run.state[k]["replicas"]
        assert replicas is not None and bool(torch.isfinite(replicas[:4]).all())
        assert bool(torch.isfinite(run.arrays[k]).all())
        assert run.metrics[k]["rejected"] == 1 and run.metrics[k]["skipped"] == 0
    losses = [full_loss(x, net, honest_nodes) for x in run.arrays]
    assert losses[-1] < start - 0.1, (start, losses)  # 1.25 -> about 1.08
    assert len(strategy.diameters) == rounds // 2
    for _, before, after in strategy.diameters:
        assert after <= before
    if rule == "filter":  # the filter steps ran (odd steps after the first)
        assert all(
            config_of(ex.ins)["byzsgd-rule"] == "filter"
            for k in (2, 4, 6, 8)
            for ex in run.rounds[k]
            if int(ex.ins.metadata.dst_node_id) != NODES[4]
        )


# --- 6. the messages --------------------------------------------------------------------------


def test_median_rule_messages() -> None:
    net = Network(NODES)
    strategy = make(server_attack="negate", f=2, gather_period=3)
    steps = drive(strategy, net, 4)
    for step in steps:
        assert set(step.messages) == set(NODES) and set(step.pulled) == set(NODES)
        for node, msg in step.messages.items():
            cfg = config_of(msg)
            assert cfg["op"] == "byzsgd" and cfg["byzsgd-rule"] == "median"
            assert cfg["step"] == step.t and cfg["lr"] == 0.3
            assert cfg["gather-period"] == 3 and cfg["batch-size"] == 4
            assert (cfg["n-servers"], cfg["f-servers"]) == (5, 1)
            assert (cfg["n-workers"], cfg["f-workers"]) == (7, 2)
            assert isinstance(cfg["batch-seed"], int)
            models = pulled_models(msg)
            pulled = step.pulled[node]
            assert len(models) == 4 and len(pulled) == 4
            assert pulled[0] == 4  # the Byzantine model arrives first
            assert len(set(pulled[1:])) == 3 and set(pulled[1:]) <= {0, 1, 2, 3}
            torch.testing.assert_close(models[0], -step.before[4].double(), rtol=0, atol=0)
            for s, model in zip(pulled[1:], models[1:], strict=True):
                torch.testing.assert_close(model, step.before[s].double(), rtol=0, atol=0)
        seeds = [config_of(m)["batch-seed"] for m in step.messages.values()]
        assert len(set(seeds)) == len(seeds)
    # the honest order is shuffled: not always the same three servers
    assert len({tuple(p) for step in steps for p in step.pulled.values()}) > 1


def test_a_stalling_server_is_replaced_by_honest_models() -> None:
    net = Network(NODES[:4])
    strategy = make(server_attack="stall")
    step = drive(strategy, net, 2)[-1]
    for node, msg in step.messages.items():
        assert sorted(step.pulled[node]) == [0, 1, 2, 3]
        models = pulled_models(msg)
        for s, model in zip(step.pulled[node], models, strict=True):
            torch.testing.assert_close(model, step.before[s].double(), rtol=0, atol=0)


def test_random_server_equivocates_between_workers() -> None:
    net = Network(NODES[:4])
    strategy = make(server_attack="random:scale=10")
    step = drive(strategy, net, 2)[-1]
    firsts = {}
    for node, msg in step.messages.items():
        assert step.pulled[node][0] == 4
        first = pulled_models(msg)[0]
        want = strategy.server_attack(step.before[4], strategy.x0, node, step.t)
        torch.testing.assert_close(first, want.double(), rtol=0, atol=0)
        firsts[node] = first
    for a, b in itertools.combinations(firsts.values(), 2):
        assert not torch.allclose(a, b)


def filter_tamper(errors: dict[int, int], missing: dict[int, int]):
    """Tamper: node ``errors[round]`` sends an error reply in that round, node
    ``missing[round]`` no reply at all."""

    def tamper(server_round: int, ins: Message, reply: Message) -> Message | None:
        node = int(ins.metadata.dst_node_id)
        if errors.get(server_round) == node:
            return Message(Error(code=2, reason="lost"), reply_to=ins)
        if missing.get(server_round) == node:
            return None
        return reply

    return tamper


@pytest.mark.parametrize("attack", ["negate", "stall"])
def test_filter_rule_messages(attack: str) -> None:
    lost, silent = NODES[3], NODES[5]
    net = Network(NODES, tamper=filter_tamper({4: lost}, {7: silent}))
    strategy = make(server_attack=attack, worker_rule="filter", f=2, gather_period=3)
    steps = drive(strategy, net, 8)
    ranks = {n: i for i, n in enumerate(sorted(NODES))}
    for step in steps:
        filtering = 0
        for node, msg in step.messages.items():
            cfg = config_of(msg)
            models = pulled_models(msg)
            pulled = step.pulled[node]
            assert len(models) == len(pulled)
            median_set = (
                step.t == 1  # nobody has a previous step
                or step.t % 3 == 0  # gather steps
                or (step.t == 5 and node == lost)  # its step-4 reply was an error
                or (step.t == 8 and node == silent)  # its step-7 reply never came
            )
            if median_set:
                assert cfg["byzsgd-rule"] == "median" and len(models) == 4
                assert pulled[0] == 4 if attack == "negate" else sorted(pulled) == [0, 1, 2, 3]
                continue
            filtering += 1
            assert cfg["byzsgd-rule"] == "filter" and len(models) == 2  # f_ps + 1
            order = [(ranks[node] + step.t + i) % 5 for i in range(5)]
            if attack == "stall":
                order = [s for s in order if s != 4]
            assert pulled == order[:2]
            for s, model in zip(pulled, models, strict=True):
                want = -step.before[4] if s == 4 else step.before[s]
                torch.testing.assert_close(model, want.double(), rtol=0, atol=0)
        # the workers' filter counters, summed over the accepted replies
        m = step.metrics
        assert m["filter-fallback"] <= filtering and m["filter-rejected"] <= 2 * filtering
        if filtering == 0:
            assert m["filter-rejected"] == 0 and m["filter-fallback"] == 0
    assert [s.metrics["rejected"] for s in steps] == [0, 0, 0, 1, 0, 0, 0, 0]  # the error
    assert [s.metrics["accepted"] for s in steps] == [7, 7, 7, 6, 7, 7, 6, 7]  # + the silence
    # the round-robin reaches the Byzantine server unless it stalls
    seen = any(4 in step.pulled[n] for step in steps[1:] for n in NODES)
    assert seen == (attack != "stall")


# --- 7. bad replies ------------------------------------------------------------------------------


def bad_replies(nan_node: int, error_node: int):
    def tamper(server_round: int, ins: Message, reply: Message) -> Message:
        node = int(ins.metadata.dst_node_id)
        if node == nan_node:
            return replace_arrays(reply, lambda rec, key, a: np.full_like(a, np.nan), ins)
        if node == error_node:
            return Message(Error(code=2, reason="crash"), reply_to=ins)
        return reply

    return tamper


@pytest.mark.parametrize("rule", ["median", "filter"])
def test_nan_and_error_replies_are_rejected_and_counted(rule: str) -> None:
    net = Network(NODES, tamper=bad_replies(NODES[0], NODES[5]))
    strategy = make(f=1, worker_rule=rule, gather_period=2)
    steps = drive(strategy, net, 4)
    for step in steps:
        m = step.metrics
        assert m["rejected"] == 2 and m["accepted"] == 5
        assert m["rejected-non-finite"] == 1 and m["rejected-error-reply"] == 1
        assert m["quorum"] == 5 and m["skipped"] == 0  # n_w - f_w = 6 wanted, 5 valid
        assert bool(torch.isfinite(step.after).all()) and bool(torch.isfinite(step.model).all())
        assert not torch.equal(step.after, step.before)
    assert strategy.fresh == frozenset(NODES) - {NODES[0], NODES[5]}


def test_all_replies_invalid_skips_the_step() -> None:
    def tamper(server_round: int, ins: Message, reply: Message) -> Message:
        if server_round == 2:
            return Message(Error(code=2, reason="down"), reply_to=ins)
        return reply

    net = Network(NODES[:4], tamper=tamper)
    strategy = make(f=1, worker_rule="filter", gather_period=10)
    steps = drive(strategy, net, 3)
    second = steps[1]
    assert second.metrics["accepted"] == 0 and second.metrics["rejected"] == 4
    assert second.metrics["skipped"] == 5 and second.metrics["quorum"] == 0
    torch.testing.assert_close(second.after, second.before, rtol=0, atol=0)
    torch.testing.assert_close(second.model, steps[0].model, rtol=0, atol=0)
    assert strategy.fresh != frozenset()  # step 3 went on
    third = steps[2]
    assert all(config_of(m)["byzsgd-rule"] == "median" for m in third.messages.values())
    assert third.metrics["accepted"] == 4 and third.metrics["skipped"] == 0
    assert not torch.equal(third.after, third.before)


# --- 8. through the runner --------------------------------------------------------------------


def test_runner_local_engine() -> None:
    from flwr_byz.simulations import ExperimentConfig
    from flwr_byz.simulations.local import run_local
    from flwr_byz.simulations.runner import prepare

    cfg = ExperimentConfig(
        method="byzsgd",
        dataset="digits",
        model="logreg",
        clients=7,
        byzantine=2,
        attack="sign-flip",
        aggregator="mda",
        rounds=6,
        lr=0.3,
        batch_size=32,
        params={"n_servers": 5, "f_servers": 1, "server_attack": "negate", "gather_period": 2},
    )
    (result,) = run_local([prepare(cfg)])
    assert len(result.rounds) == 6
    for record in result.rounds:
        metrics = record.metrics
        assert math.isfinite(metrics["diameter"]) and metrics["diameter"] >= 0
        if record.round % 2 == 0:
            assert metrics["gather"] == 1
            assert metrics["diameter"] <= metrics["diameter-before-gather"]
        else:
            assert metrics["gather"] == 0 and "diameter-before-gather" not in metrics
    assert result.accuracy > 0.5  # 10 classes: chance is 0.1
