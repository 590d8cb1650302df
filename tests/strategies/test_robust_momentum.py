"""RobustMomentum against a brute-force worker-momentum loop (Karimireddy et al. 2021, Alg. 2,
with the Eq. (10) clipping of Malinovsky et al. 2024).

Runs go through ``strategy.start`` on a LocalGrid of GradientClients (softmax regression, one
persistent Context per node, so each client's momentum lives in its ``context.state``). The
brute force keeps every client's momentum itself, in float64, from gradients it computes at
the points it computes (plain torch autograd on the model formula), updating a client only in
the rounds it is sampled, and aggregates with its own Mean / NumPy median.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Error, Message

from flwr_byz.strategies import RobustMomentum
from tests.clients.gradient_helpers import single_torch_thread
from tests.strategies.method_helpers import (
    Exchange,
    Network,
    Run,
    clip_reference,
    config_of,
    minibatch,
    model_grad,
    replace_arrays,
    run_strategy,
    stranger,
    vec,
)

NODES = [21, 22, 23, 24, 25, 26]
LR = 0.5
BETA = 0.8
BATCH = 8
CLIP_ALPHA = 4.0
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with single_torch_thread():
        yield


def make(**kwargs) -> RobustMomentum:
    options = dict(
        aggregator="mean", lr=LR, momentum=BETA, batch_size=BATCH, clients_per_round=3, seed=1
    )
    options.update(kwargs)
    return RobustMomentum(**options)


def mean_rule(rows: torch.Tensor) -> torch.Tensor:
    return rows.sum(dim=0) / rows.shape[0]


def median_rule(rows: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.median(rows.numpy(), axis=0))  # even n: mean of the middle two


RULES = {"mean": mean_rule, "median": median_rule}


def untampered(ex: Exchange, msg: Message) -> bool:
    return msg is ex.honest


def check_against_brute_force(
    run: Run,
    net: Network,
    rule: Callable[[torch.Tensor], torch.Tensor],
    clip_alpha: float | None,
    accept: Callable[[Exchange, Message], bool] = untampered,
) -> list[int]:
    """Walk the rounds with a brute-force momentum loop; assert the points sent, the honest
    replies, the metrics, g and x of every round. Returns the clipped counts."""
    x, x_prev, g = run.x0.clone(), None, None
    momenta: dict[int, torch.Tensor] = {}
    clipped_counts = []
    for k, exchanges in enumerate(run.rounds):
        for ex in exchanges:
            cfg = config_of(ex.ins)
            assert cfg["op"] == "momentum" and cfg["beta"] == BETA
            assert cfg["batch-size"] == BATCH
            torch.testing.assert_close(vec(ex.ins.content["arrays"]), x, atol=ATOL, rtol=0)
            node = int(ex.ins.metadata.dst_node_id)
            data_x, data_y = net.data[node]
            idx = minibatch(len(data_y), BATCH, cfg["batch-seed"])
            grad = model_grad(x, data_x[idx], data_y[idx])
            momenta[node] = (
                grad if node not in momenta else BETA * momenta[node] + (1 - BETA) * grad
            )
            torch.testing.assert_close(
                vec(ex.honest.content["grad"]), momenta[node], atol=ATOL, rtol=1e-5
            )
        rows = torch.stack(
            [vec(m.content["grad"]) for ex in exchanges for m in ex.sent if accept(ex, m)]
        )
        level, clipped = None, 0
        if clip_alpha is not None and g is not None:
            level = clip_alpha * float(torch.linalg.norm(x - x_prev))
            shortened, clipped = clip_reference(rows - g, level)
            g = g + rule(shortened)
        else:
            g = rule(rows)
        x_prev, x = x, x - LR * g
        metrics = run.metrics[k]
        assert metrics["clip-level"] == (-1 if level is None else pytest.approx(level, rel=1e-5))
        assert metrics["clipped"] == clipped
        assert metrics["skipped"] == 0
        torch.testing.assert_close(run.state[k]["g"], g, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(run.arrays[k], x, atol=ATOL, rtol=1e-6)
        clipped_counts.append(clipped)
    return clipped_counts


def sampled(run: Run) -> list[set[int]]:
    return [{int(ex.ins.metadata.dst_node_id) for ex in exchanges} for exchanges in run.rounds]


@pytest.mark.parametrize("clip_alpha", [None, CLIP_ALPHA])
@pytest.mark.parametrize(("aggregator", "per_round"), [("mean", 3), ("median", 4)])
def test_matches_brute_force_worker_momentum(aggregator, per_round, clip_alpha):
    net = Network(NODES)
    strategy = make(aggregator=aggregator, clients_per_round=per_round, clip_alpha=clip_alpha)
    run = run_strategy(strategy, net, 5)
    rounds = sampled(run)
    assert all(len(s) == per_round for s in rounds)
    # partial participation matters: some node skips a round and comes back, some node
    # joins late (its momentum starts then, from its first gradient)
    assert any(
        n in rounds[i] and n not in rounds[i + 1] and n in set().union(*rounds[i + 2 :])
        for i in range(3)
        for n in NODES
    )
    assert any(n not in rounds[0] and n in set().union(*rounds[1:]) for n in NODES)
    clipped = check_against_brute_force(run, net, RULES[aggregator], clip_alpha)
    if clip_alpha is not None:
        total = sum(len(s) for s in rounds[1:])
        assert 0 < sum(clipped) < total, clipped  # the clipping bites on some rows only


def test_restart_resets_the_run_and_the_clients_momentum():
    net = Network(NODES)
    strategy = make()
    first = run_strategy(strategy, net, 3)
    key1 = strategy.state_key
    second = run_strategy(strategy, net, 3)
    key2 = strategy.state_key
    assert key1 != key2
    for run, key in ((first, key1), (second, key2)):
        assert {config_of(ex.ins)["state-key"] for r in run.rounds for ex in r} == {key}

    def trace(run: Run) -> list:
        out = []
        for exchanges in run.rounds:
            for ex in exchanges:
                cfg = config_of(ex.ins)
                cfg.pop("state-key")
                out.append((int(ex.ins.metadata.dst_node_id), sorted(cfg.items())))
        return out

    # same seed, fresh state: the second run repeats the first exactly; a client that kept
    # its momentum from run 1 would answer m = beta m_old + (1 - beta) grad instead
    assert trace(first) == trace(second)
    for r1, r2 in zip(first.rounds, second.rounds, strict=True):
        for e1, e2 in zip(r1, r2, strict=True):
            torch.testing.assert_close(
                vec(e1.sent[0].content["grad"]), vec(e2.sent[0].content["grad"])
            )
    for a1, a2 in zip(first.arrays, second.arrays, strict=True):
        torch.testing.assert_close(a1, a2)
    check_against_brute_force(second, net, mean_rule, None)
    for context in net.contexts.values():  # run 1's momenta are gone from the nodes
        assert not any(key1 in name for name in context.state)


# --- validation ----------------------------------------------------------------------------


def _nan(ins: Message, reply: Message) -> Message:
    return replace_arrays(reply, lambda rec, key, a: np.full_like(a, np.nan), ins)


def _shape(ins: Message, reply: Message) -> Message:
    return replace_arrays(
        reply, lambda rec, key, a: a.reshape(-1)[:-1] if key == "weight" else a, ins
    )


BAD = {
    "non-finite": _nan,
    "shape": _shape,
    "error-reply": lambda ins, reply: Message(Error(code=2, reason="crash"), reply_to=ins),
    "unknown-node": lambda ins, reply: [reply, stranger(ins, reply)],
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_rejections_are_counted_and_the_rest_aggregated(reason):
    hit: set[int] = set()

    def tamper(server_round: int, ins: Message, reply: Message):
        if server_round in hit:
            return reply
        hit.add(server_round)
        return BAD[reason](ins, reply)

    net = Network(NODES, tamper=tamper)
    run = run_strategy(
        make(aggregator="median", clients_per_round=4, clip_alpha=CLIP_ALPHA), net, 4
    )
    lost = int(reason != "unknown-node")
    for m in run.metrics:
        assert m[f"rejected-{reason}"] == 1 and m["rejected"] == 1
        assert m["accepted"] == m["sampled"] - lost
    check_against_brute_force(run, net, median_rule, CLIP_ALPHA)


def test_a_round_without_valid_replies_keeps_the_model():
    def tamper(server_round: int, ins: Message, reply: Message):
        return _nan(ins, reply) if server_round == 2 else reply

    run = run_strategy(make(), Network(NODES, tamper=tamper), 3)
    m = run.metrics[1]
    assert m["skipped"] == 1 and m["accepted"] == 0 and m["rejected-non-finite"] == 3
    assert torch.equal(run.arrays[1], run.arrays[0])
    assert torch.equal(run.state[1]["g"], run.state[0]["g"])
    assert run.metrics[2]["skipped"] == 0
    assert not torch.allclose(run.arrays[2], run.arrays[1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": 1.0},
        {"momentum": -0.1},
        {"clip_alpha": 0.0},
        {"clip_alpha": -2.0},
        {"clients_per_round": 0},
        {"lr": 0.0},
        {"batch_size": -1},
    ],
)
def test_constructor_rejects(kwargs):
    with pytest.raises(ValueError):
        make(**kwargs)
