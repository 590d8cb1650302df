"""ByzSGD's step scheduling (``methods.byzsgd``: ``plan_step``, ``finish_step`` and their parts)
against the ``ByzSGD`` strategy's own code before it moved there (``Reference`` below, kept
line for line): the same pulls, seeds, quorums, gathers and observed models, the same calls to
the server attack, and the generator left in the same state."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from flwr_byz.aggregators import Mean
from flwr_byz.attacks import get_server_attack
from flwr_byz.methods import byzsgd
from flwr_byz.methods.byzsgd import ByzSGDState, Servers
from flwr_byz.methods.common import guarded

ATTACKS = ["none", "perturb", "negate", "random:scale=1e3", "stale", "stall", "non-finite"]


class Recorder:
    """A server attack that logs its calls (and sends what ``attack`` sends)."""

    def __init__(self, attack) -> None:
        self.attack = attack
        self.calls: list[tuple[int, int]] = []

    def __call__(self, own, x0, recipient, step):
        self.calls.append((recipient, step))
        return self.attack(own, x0, recipient, step)


def _wrong_shape(own, x0, recipient, step):
    return torch.zeros(own.numel() + 1)


class Reference:
    """The ByzSGD strategy's scheduling as it was written before ``plan_step`` /
    ``finish_step`` (``sent_by``, ``arrivals``, ``_median_set``, ``_pull_order``, the loop of
    ``configure_train`` and the sequence of ``aggregate_train``)."""

    def __init__(self, rng: random.Random, state: ByzSGDState, n: int, f: int, attack) -> None:
        self._rng, self.state = rng, state
        self.n_servers, self.f_servers, self.server_attack = n, f, attack

    @property
    def byzantine(self) -> list[int]:
        return list(range(self.n_servers - self.f_servers, self.n_servers))

    def sent_by(self, server: int, recipient: int):
        own = self.state.replicas[server]
        if server not in self.byzantine:
            return own
        return self.server_attack(own, self.state.x0, recipient, self.state.t)

    def arrivals(self, recipient: int, exclude: int | None = None):
        byz_order, honest = byzsgd.arrival_order(self._rng, self.n_servers, self.f_servers, exclude)
        byz = [(s, self.sent_by(s, recipient)) for s in byz_order]
        replicas = self.state.replicas
        return [(s, m) for s, m in byz if m is not None] + [(s, replicas[s]) for s in honest]

    def _median_set(self, node: int):
        return self.arrivals(node)[: self.n_servers - self.f_servers]

    def _pull_order(self, node: int, rank: int):
        out = []
        for s in byzsgd.round_robin(rank, self.state.t, self.n_servers):
            model = self.sent_by(s, node)
            if model is not None:
                out.append((s, model))
            if len(out) == self.f_servers + 1:
                break
        return out

    def configure(self, nodes, fresh, rule: str, period: int):
        gather = self.state.t % period == 0
        rank = {n: i for i, n in enumerate(sorted(nodes))}
        out = []
        for node in nodes:
            filtering = rule == "filter" and not gather and node in fresh
            pulls = self._pull_order(node, rank[node]) if filtering else self._median_set(node)
            out.append((node, filtering, pulls, self._rng.getrandbits(31)))
        return out

    def aggregate(self, grads, sampled: int, f_workers: int, fixed, aggregate, lr, period):
        grads = grads.to(self.state.replicas.dtype)
        m = grads.shape[0]
        wanted = fixed or max(sampled - f_workers, 1)
        quorum = min(m, wanted)
        quorums = byzsgd.draw_quorums(self._rng, m, quorum, self.n_servers)
        replicas, skipped = byzsgd.server_step(
            self.state.replicas, grads, quorums, aggregate, lr=lr
        )
        self.state = replace(self.state, replicas=replicas)
        extra = {"quorum": quorum, "skipped": skipped, "gather": 0, "period": period}
        if self.state.t % period == 0:
            extra |= self.gather()
        q = self.n_servers - self.f_servers
        extra["diameter"] = byzsgd.diameter(self.state.replicas[:q])
        self.state = replace(self.state, x=self.observed_model())
        return extra

    def gather(self):
        q = self.n_servers - self.f_servers
        before = byzsgd.diameter(self.state.replicas[:q])
        received = [[m for _, m in self.arrivals(-(s + 1), exclude=s)] for s in range(q)]
        replicas, dropped = byzsgd.gather(self.state.replicas, q, received)
        self.state = replace(self.state, replicas=replicas)
        return {"gather": 1, "diameter-before-gather": before, "dropped-models": dropped}

    def observed_model(self):
        return byzsgd.observed_model([m for _, m in self.arrivals(0)], self.state.replicas[0].shape)


def _state(n: int, d: int, t: int, seed: int) -> ByzSGDState:
    gen = torch.Generator().manual_seed(seed)
    replicas = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x0 = torch.randn(d, generator=gen, dtype=torch.float64)
    return ByzSGDState(replicas, replicas.median(dim=0).values, x0, t)


def _same_pairs(a, b) -> bool:
    return len(a) == len(b) and all(
        s == r and m.shape == n.shape and torch.equal(m.nan_to_num(7.0), n.nan_to_num(7.0))
        for (s, m), (r, n) in zip(a, b, strict=True)
    )


def _same_stats(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[k] == b[k] for k in a)


@pytest.mark.parametrize("attack", [*ATTACKS, _wrong_shape])
@pytest.mark.parametrize(("n", "f"), [(5, 1), (8, 2), (1, 0)])
@pytest.mark.parametrize("rule", ["median", "filter"])
@pytest.mark.parametrize("t", [1, 2, 3])
def test_plan_step_equals_the_strategy_loop(attack, n: int, f: int, rule: str, t: int) -> None:
    nodes = [14, 3, 9, 21, 7, 5]
    fresh = frozenset({3, 9, 7, 5, 30})
    period = 3
    state = _state(n, 4, t, seed=n + t)
    mine, theirs = Recorder(get_server_attack(attack, 5)), Recorder(get_server_attack(attack, 5))
    rng, ref_rng = random.Random(t), random.Random(t)
    plans = byzsgd.plan_step(
        rng, state, Servers(n, f, mine), nodes, fresh=fresh, rule=rule, period=period
    )
    want = Reference(ref_rng, state, n, f, theirs).configure(nodes, fresh, rule, period)
    assert [p.node for p in plans] == nodes
    for plan, (node, filtering, pulls, seed) in zip(plans, want, strict=True):
        assert plan.node == node and plan.filtering == filtering and plan.batch_seed == seed
        assert _same_pairs(list(plan.pulls), pulls)
    assert mine.calls == theirs.calls
    assert rng.getstate() == ref_rng.getstate()
    filtering = [p.filtering for p in plans]
    if rule == "filter" and t % period:
        assert filtering == [node in fresh for node in nodes]
        assert all(len(p.pulls) <= f + 1 for p in plans if p.filtering)
    else:
        assert not any(filtering)


@pytest.mark.parametrize("attack", [*ATTACKS, _wrong_shape])
@pytest.mark.parametrize(("n", "f"), [(5, 1), (8, 2), (1, 0)])
@pytest.mark.parametrize("t", [2, 3])
@pytest.mark.parametrize(("m", "fixed"), [(7, None), (7, 2), (3, None), (0, None)])
def test_finish_step_equals_the_strategy_sequence(attack, n, f, t, m, fixed) -> None:
    period, lr, sampled, f_w = 3, 0.25, 7, 2
    state = _state(n, 5, t, seed=10 * n + t)
    grads = torch.randn(m, 5, generator=torch.Generator().manual_seed(m)).float()
    mine, theirs = Recorder(get_server_attack(attack, 1)), Recorder(get_server_attack(attack, 1))
    rng, ref_rng = random.Random(m + t), random.Random(m + t)
    rows: list[torch.Tensor] = []

    def aggregate(x: torch.Tensor) -> torch.Tensor | None:
        rows.append(x)
        return guarded(Mean())(x)

    new, stats = byzsgd.finish_step(
        rng,
        state,
        Servers(n, f, mine),
        grads,
        aggregate,
        quorum=byzsgd.worker_quorum(sampled, f_w, fixed),
        period=period,
        lr=lr,
    )
    ref = Reference(ref_rng, state, n, f, theirs)
    ref_rows: list[torch.Tensor] = []

    def ref_aggregate(x: torch.Tensor) -> torch.Tensor | None:
        ref_rows.append(x)
        return guarded(Mean())(x)

    want = ref.aggregate(grads, sampled, f_w, fixed, ref_aggregate, lr, period)
    assert _same_stats(stats, want)
    assert torch.equal(new.replicas, ref.state.replicas) and torch.equal(new.x, ref.state.x)
    assert new.t == t and torch.equal(new.x0, state.x0)
    assert len(rows) == n and all(torch.equal(a, b) for a, b in zip(rows, ref_rows, strict=True))
    assert mine.calls == theirs.calls
    assert rng.getstate() == ref_rng.getstate()
    assert bool(stats["gather"]) == (t % period == 0)


def test_parts_equal_the_strategy_methods() -> None:
    state = _state(8, 3, 4, seed=2)
    attack = get_server_attack("random:scale=10", 3)
    servers = Servers(8, 2, attack)
    ref = Reference(random.Random(1), state, 8, 2, attack)
    rng = random.Random(1)
    for s in range(8):
        a, b = byzsgd.sent_by(state, servers, s, 11), ref.sent_by(s, 11)
        assert a is not None and b is not None and torch.equal(a, b)
    assert _same_pairs(byzsgd.arrivals(rng, state, servers, 11, exclude=3), ref.arrivals(11, 3))
    assert _same_pairs(
        byzsgd.pulls(rng, state, servers, 11, 2, filtering=True), ref._pull_order(11, 2)
    )
    assert _same_pairs(
        byzsgd.pulls(rng, state, servers, 11, 2, filtering=False), ref._median_set(11)
    )
    gathered, stats = byzsgd.gather_step(rng, state, servers)
    assert _same_stats(stats, ref.gather()) and torch.equal(gathered.replicas, ref.state.replicas)
    assert torch.equal(byzsgd.observe(rng, gathered, servers), ref.observed_model())
    assert rng.getstate() == ref._rng.getstate()


def test_worker_quorum() -> None:
    assert byzsgd.worker_quorum(7, 2) == 5
    assert byzsgd.worker_quorum(2, 3) == 1
    assert byzsgd.worker_quorum(7, 2, 3) == 3
    assert Servers(5, 1, get_server_attack("none")).n_honest == 4
