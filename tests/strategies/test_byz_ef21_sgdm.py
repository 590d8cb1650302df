"""ByzEF21SGDM, ByzEF21 and BRCSGD against brute-force loops (Liu et al. 2024, arXiv 2409.08640).

Every run goes through ``strategy.start`` on a LocalGrid whose nodes are GradientClients (a
softmax regression, one persistent Context per node). The brute force is plain torch in
float64 written from the algorithm text: per node the momentum ``v_i = (1 - eta) v_i + eta s_i``
(``v_i = s_i`` first), the client's ``g_i`` (``g_i += C(v_i - g_i)``, a dense reset ``g_i = v_i``
on first contact or lost state) and the server's copy of it (updated from the message that was
actually accepted), then ``x <- x - lr RAgg(all copies in node-id order)``. Compressors are
re-implemented by hand (TopK: the K largest magnitudes; RandK: the first K of ``randperm(d)``
from the seed, scaled by d/K). After every round the server's copies, the model, the metrics
and the clients' own ``g`` in ``context.state`` are compared with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from flwr.app import Context, Error, Message, MetricRecord, RecordDict

from flwr_byz.aggregators import get_aggregator
from flwr_byz.clients.state import load_count, load_vector
from flwr_byz.compressors import get_compressor
from flwr_byz.protocol.records import layout_of, payload_record, unflatten
from flwr_byz.strategies import BRCSGD, ByzEF21, ByzEF21SGDM, SampleTooSmallError
from tests.clients.gradient_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.strategies.method_helpers import (
    Exchange,
    Network,
    Run,
    config_of,
    minibatch,
    model_grad,
    replace_arrays,
    run_strategy,
    stranger,
    vec,
)

NODES = [31, 32, 33, 34, 35]
LR = 0.5
ETA = 0.1
BATCH = 8
SEED = 3
ATOL = 1e-5
D = 5 * 3 + 3  # Linear(5, 3): weight [3, 5] and bias [3]


def make(cls: type = ByzEF21SGDM, **kwargs) -> ByzEF21SGDM:
    options = dict(
        aggregator="median",
        lr=LR,
        eta=ETA,
        compressor="topk:0.1",
        batch_size=BATCH,
        seed=SEED,
    )
    options.update(kwargs)
    if cls is not ByzEF21SGDM:
        options.pop("eta")
    return cls(**options)


# --- the brute force: rules and compressors by hand ------------------------------------------


def mean_rule(rows: torch.Tensor) -> torch.Tensor:
    return rows.sum(dim=0) / rows.shape[0]


def median_rule(rows: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.median(rows.numpy(), axis=0))  # even n: mean of the middle two


def trimmed_rule(f: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def rule(rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[0] <= 2 * f:
            raise ValueError("too few rows")
        s = np.sort(rows.numpy(), axis=0)
        return torch.from_numpy(s[f : rows.shape[0] - f].mean(axis=0))

    return rule


RULES = {"mean": mean_rule, "median": median_rule}


def topk_by_hand(x: torch.Tensor, fraction: float) -> torch.Tensor:
    k = min(max(round(fraction * len(x)), 1), len(x))
    order = sorted(range(len(x)), key=lambda i: -abs(float(x[i])))
    out = torch.zeros_like(x)
    for i in order[:k]:
        out[i] = x[i]
    return out


def randk_support(seed: int, d: int, k: int) -> torch.Tensor:
    return torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:k]


def randk_by_hand(x: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    d = len(x)
    k = min(max(round(fraction * d), 1), d)
    idx = randk_support(seed, d, k)
    out = torch.zeros_like(x)
    out[idx] = x[idx] * (d / k)
    return out


def compress_by_hand(spec: str, x: torch.Tensor, seed: int) -> torch.Tensor:
    """C(x) for the specs the brute force knows ("none", "topk:<f>", "randk:<f>")."""
    if spec == "none":
        return x.clone()
    name, fraction = spec.split(":")
    if name == "topk":
        return topk_by_hand(x, float(fraction))
    if name == "randk":
        return randk_by_hand(x, float(fraction), seed)
    raise AssertionError(spec)


def decode(msg: Message, d: int = D) -> torch.Tensor:
    """A reply's vector by hand: ``grad`` (dense), or a payload: identity ``values``, TopK
    ``values`` at ``indices``, RandK ``values`` on the support drawn from ``seed``."""
    records = msg.content.array_records
    if "grad" in records:
        return vec(records["grad"])
    record = records["payload"]
    values = torch.from_numpy(record["values"].numpy().astype(np.float64))
    out = torch.zeros(d, dtype=torch.float64)
    if "indices" in record:
        out[torch.from_numpy(record["indices"].numpy().astype(np.int64))] = values
    elif "seed" in record:
        out[randk_support(int(record["seed"].numpy().reshape(-1)[0]), d, len(values))] = values
    else:
        out[:] = values
    return out


# --- recording the server's copies and the clients' g after every round ----------------------


@dataclass
class Snapshot:
    copies: dict[int, torch.Tensor]  # the server's g_i (float64 views of its float32 copies)
    versions: dict[int, int]
    client_g: dict[int, torch.Tensor | None]  # each node's g_i in its context.state
    client_count: dict[int, int | None]
    momentum: dict[int, torch.Tensor | None]
    rows: torch.Tensor | None = None  # what the aggregator saw (with a Spy)


class Spy:
    """An aggregator that records its input and runs ``inner``."""

    def __init__(self, inner: str = "median") -> None:
        self.inner = get_aggregator(inner)
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.detach().clone())
        return self.inner(x)


def watch(strategy: ByzEF21SGDM, net: Network) -> list[Snapshot]:
    """Snapshots of the server's copies and every client's state after each aggregate_train."""
    snaps: list[Snapshot] = []
    original = strategy.aggregate_train

    def aggregate_train(server_round, replies):
        out = original(server_round, replies)
        cfg = {"state-key": strategy.state_key}

        def f64(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(torch.float64).clone()

        snaps.append(
            Snapshot(
                copies={n: f64(c) for n, c in strategy.copies.items()},
                versions=dict(strategy.versions),
                client_g={n: f64(load_vector(c, cfg, "ef21-g")) for n, c in net.contexts.items()},
                client_count={n: load_count(c, cfg, "ef21-count") for n, c in net.contexts.items()},
                momentum={n: f64(load_vector(c, cfg, "momentum")) for n, c in net.contexts.items()},
            )
        )
        return out

    strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]
    return snaps


def node_of(ex: Exchange) -> int:
    return int(ex.ins.metadata.dst_node_id)


Accept = Callable[[Exchange, Message], bool]


def untampered(ex: Exchange, msg: Message) -> bool:
    return msg is ex.honest


def everything(ex: Exchange, msg: Message) -> bool:
    return True


@dataclass
class Reference:
    x: list[torch.Tensor]
    copies: list[dict[int, torch.Tensor]]
    client_g: list[dict[int, torch.Tensor]]


def replay(
    run: Run,
    net: Network,
    snaps: list[Snapshot],
    *,
    eta: float,
    spec: str,
    rule: Callable[[torch.Tensor], torch.Tensor],
    lr: float = LR,
    batch: int = BATCH,
    accept: Accept = untampered,
    wiped: dict[int, set[int]] | None = None,
) -> Reference:
    """Byz-EF21-SGDM in float64 from the algorithm text, asserting every round against the run.

    ``accept(ex, msg)``: which of the messages sent were accepted by the server (lost replies
    are simply not sent); ``wiped[r]``: nodes whose client state is lost right after they
    answered round r.
    Server side: a copy per node updated from the accepted message (dense: replaced, payload:
    added), a version = accepted replies. Client side: v_i every time it is asked, g_i as of
    its last accepted reply (a reply that never counted is rolled back), a reset when its
    state is gone."""
    wiped = wiped or {}
    x = run.x0.clone()
    v: dict[int, torch.Tensor] = {}
    g_cli: dict[int, torch.Tensor] = {}  # the client's g_i as the server agrees on it
    stored: dict[int, torch.Tensor] = {}  # what the client has actually stored (maybe ahead)
    g_srv: dict[int, torch.Tensor] = {}
    versions: dict[int, int] = {}
    ref = Reference([], [], [])
    for k, exchanges in enumerate(run.rounds):
        rnd = k + 1
        dsts = [node_of(ex) for ex in exchanges]
        assert len(set(dsts)) == len(dsts)
        accepted = resets = 0
        for ex in exchanges:
            node = node_of(ex)
            cfg = config_of(ex.ins)
            assert cfg["op"] == "momentum"
            assert cfg["beta"] == pytest.approx(1.0 - eta)
            assert cfg["compressor"] == spec and cfg["batch-size"] == batch
            assert cfg["ef21-version"] == versions.get(node, -1)
            torch.testing.assert_close(vec(ex.ins.content["arrays"]), x, atol=ATOL, rtol=0)
            data_x, data_y = net.data[node]
            idx = minibatch(len(data_y), batch, cfg["batch-seed"])
            s = model_grad(x, data_x[idx], data_y[idx])
            v[node] = s if node not in v else (1.0 - eta) * v[node] + eta * s
            reset = node not in g_cli
            if reset:
                assert set(ex.honest.content.array_records) == {"grad"}
                c = v[node]
                torch.testing.assert_close(decode(ex.honest), c, atol=ATOL, rtol=1e-5)
                stored[node] = v[node].clone()
            else:
                assert set(ex.honest.content.array_records) == {"payload"}
                c = compress_by_hand(spec, v[node] - g_cli[node], cfg["compressor-seed"])
                torch.testing.assert_close(decode(ex.honest), c, atol=ATOL, rtol=1e-5)
                stored[node] = g_cli[node] + c
            kept = [m for m in ex.sent if accept(ex, m)]
            assert len(kept) <= 1
            if kept:
                accepted += 1
                resets += int(reset)
                g_cli[node] = stored[node].clone()
                got = decode(kept[0])
                g_srv[node] = got.clone() if reset else g_srv[node] + got
                versions[node] = versions.get(node, -1) + 1
        for node in wiped.get(rnd, set()):  # the node forgets everything after answering
            v.pop(node, None)
            g_cli.pop(node, None)
            stored.pop(node, None)
        skipped = 1
        if g_srv:
            try:
                agg = rule(torch.stack([g_srv[n] for n in sorted(g_srv)]))
                x = x - lr * agg
                skipped = 0
            except ValueError:
                pass
        # --- compare with the run
        snap, metrics = snaps[k], run.metrics[k]
        assert sorted(snap.copies) == sorted(g_srv), rnd
        for node, want in g_srv.items():
            torch.testing.assert_close(snap.copies[node], want, atol=ATOL, rtol=1e-5)
        assert snap.versions == versions
        for node in net.nodes:
            if node in stored:
                torch.testing.assert_close(snap.client_g[node], stored[node], atol=ATOL, rtol=1e-5)
                torch.testing.assert_close(snap.momentum[node], v[node], atol=ATOL, rtol=1e-5)
            else:
                assert snap.client_g[node] is None
        torch.testing.assert_close(run.arrays[k], x, atol=ATOL, rtol=1e-6)
        assert metrics["accepted"] == accepted
        assert metrics["resets"] == resets
        assert metrics["copies"] == len(g_srv)
        assert metrics["sampled"] == len(exchanges)
        assert metrics["skipped"] == skipped
        ref.x.append(x.clone())
        ref.copies.append({n: t.clone() for n, t in g_srv.items()})
        ref.client_g.append({n: t.clone() for n, t in g_cli.items()})
    return ref


def go(strategy: ByzEF21SGDM, net: Network, rounds: int) -> tuple[Run, list[Snapshot]]:
    snaps = watch(strategy, net)
    run = run_strategy(strategy, net, rounds, watch=("x",))
    assert len(snaps) == rounds
    return run, snaps


def assert_in_sync(snap: Snapshot, nodes) -> None:
    """The server's copy of each node's g is bitwise the client's g, versions equal counts."""
    for node in nodes:
        assert snap.client_g[node] is not None, node
        assert torch.equal(snap.copies[node], snap.client_g[node]), node
        assert snap.versions[node] == snap.client_count[node], node


def kinds(exchanges: list[Exchange]) -> dict[int, str]:
    """Each node's honest reply kind this round: "grad" (dense reset) or "payload"."""
    return {node_of(ex): next(iter(ex.honest.content.array_records)) for ex in exchanges}


def version_sent(exchanges: list[Exchange], node: int) -> int:
    return next(config_of(ex.ins)["ef21-version"] for ex in exchanges if node_of(ex) == node)


# --- 1. eta = 1 with no compression is robust-aggregated SGD ---------------------------------


@pytest.mark.parametrize("aggregator", ["median", "mean"])
@pytest.mark.parametrize("cls", [ByzEF21SGDM, ByzEF21])
def test_eta_one_without_compression_is_robust_sgd(aggregator: str, cls: type):
    net = Network(NODES)
    strategy = make(
        cls,
        aggregator=aggregator,
        compressor="none",
        **({"eta": 1.0} if cls is ByzEF21SGDM else {}),
    )
    assert strategy.eta == 1.0
    run, _ = go(strategy, net, 5)
    x = run.x0.clone()
    rule = RULES[aggregator]
    for k, exchanges in enumerate(run.rounds):
        grads = {}
        for ex in exchanges:
            cfg = config_of(ex.ins)
            assert cfg["beta"] == 0.0 and cfg["compressor"] == "none"
            data_x, data_y = net.data[node_of(ex)]
            idx = minibatch(len(data_y), BATCH, cfg["batch-seed"])
            grads[node_of(ex)] = model_grad(x, data_x[idx], data_y[idx])
        assert sorted(grads) == NODES
        x = x - LR * rule(torch.stack([grads[n] for n in sorted(grads)]))
        torch.testing.assert_close(run.arrays[k], x, atol=ATOL, rtol=1e-6)
    assert not torch.allclose(run.arrays[-1], run.x0, atol=1e-2)  # it did move


def test_byz_ef21_is_byz_ef21_sgdm_with_eta_one():
    a, b = Network(NODES), Network(NODES)
    run_a, snaps_a = go(make(ByzEF21), a, 4)
    run_b, snaps_b = go(make(eta=1.0), b, 4)
    for xa, xb in zip(run_a.arrays, run_b.arrays, strict=True):
        assert torch.equal(xa, xb)
    for sa, sb in zip(snaps_a, snaps_b, strict=True):
        assert sa.copies.keys() == sb.copies.keys()
        assert all(torch.equal(sa.copies[n], sb.copies[n]) for n in sa.copies)


# --- 2. the full brute force with TopK and momentum ---------------------------------------------


@pytest.mark.parametrize("aggregator", ["median", "mean"])
def test_matches_brute_force_byz_ef21_sgdm_topk(aggregator: str):
    net = Network(NODES)
    run, snaps = go(make(aggregator=aggregator), net, 6)
    replay(run, net, snaps, eta=ETA, spec="topk:0.1", rule=RULES[aggregator])
    assert [m["resets"] for m in run.metrics] == [len(NODES)] + [0] * 5
    for k in range(6):
        assert_in_sync(snaps[k], NODES)
    assert not torch.allclose(run.arrays[-1], run.x0, atol=1e-2)  # it did move
    # TopK(0.1) of d = 18 keeps 2 coordinates: the copies really are compressed updates
    for exchanges in run.rounds[1:]:
        for ex in exchanges:
            assert ex.honest.content["payload"]["values"].numpy().shape == (2,)


def test_matches_brute_force_with_randk_and_eta_half():
    net = Network(NODES)
    run, snaps = go(make(compressor="randk:0.25", eta=0.5), net, 5)
    replay(run, net, snaps, eta=0.5, spec="randk:0.25", rule=median_rule)
    seeds = [config_of(ex.ins)["compressor-seed"] for r in run.rounds for ex in r]
    assert len(set(seeds)) == len(seeds)  # a fresh compressor seed per node and round


# --- 3. the server's copy equals the client's g, for every compressor ------------------------


@pytest.mark.parametrize("spec", ["none", "topk:0.1", "randk:0.1", "natural", "qsgd:4"])
def test_server_copy_equals_client_g_every_round(spec: str):
    nodes = NODES[:4]
    net = Network(nodes)
    run, snaps = go(make(compressor=spec, eta=0.5, aggregator="mean"), net, 4)
    for k, snap in enumerate(snaps):
        assert sorted(snap.copies) == nodes
        assert_in_sync(snap, nodes)
        assert all(snap.versions[n] == k for n in nodes)
        assert bool(torch.isfinite(run.arrays[k]).all())
    # the copies move every round: the payloads were applied
    for node in nodes:
        assert not torch.equal(snaps[-1].copies[node], snaps[0].copies[node])


# --- 4. client state persists across rounds ---------------------------------------------------


def test_client_state_persists_and_later_replies_are_payloads():
    net = Network(NODES)
    strategy = make(eta=0.3)
    run, snaps = go(strategy, net, 4)
    ref = replay(run, net, snaps, eta=0.3, spec="topk:0.1", rule=median_rule)
    assert all(k == "grad" for k in kinds(run.rounds[0]).values())
    for exchanges in run.rounds[1:]:
        assert all(k == "payload" for k in kinds(exchanges).values())
        for ex in exchanges:
            assert config_of(ex.ins)["state-key"] == strategy.state_key
    for k, snap in enumerate(snaps):
        for node in NODES:
            assert snap.client_count[node] == k
            assert snap.momentum[node] is not None
            torch.testing.assert_close(
                snap.client_g[node], ref.client_g[k][node], atol=ATOL, rtol=0
            )
        if k:  # v and g evolve: they are kept, not recomputed from scratch
            assert all(not torch.equal(snap.momentum[n], snaps[k - 1].momentum[n]) for n in NODES)
    prefix = f"flwr-byz:{strategy.state_key}:"
    for context in net.contexts.values():
        names = {name[len(prefix) :] for name in context.state if name.startswith(prefix)}
        assert {"momentum", "ef21-g", "ef21-g-prev", "ef21-count"} <= names


def test_restart_starts_fresh_copies_and_client_state():
    net = Network(NODES[:4])
    strategy = make()
    first, _ = go(strategy, net, 2)
    key1 = strategy.state_key
    second = run_strategy(strategy, net, 2, watch=("x",))
    assert strategy.state_key != key1
    assert all(k == "grad" for k in kinds(second.rounds[0]).values())
    assert all(config_of(ex.ins)["ef21-version"] == -1 for ex in second.rounds[0])
    for a, b in zip(first.arrays, second.arrays, strict=True):
        torch.testing.assert_close(a, b)
    for context in net.contexts.values():
        assert not any(key1 in name for name in context.state)


# --- 5. partial participation -------------------------------------------------------------------


def test_partial_participation_keeps_stale_copies_in_the_aggregate():
    net = Network(NODES)
    spy = Spy("median")
    strategy = make(aggregator=spy, clients_per_round=2, eta=0.3)
    run, snaps = go(strategy, net, 8)
    replay(run, net, snaps, eta=0.3, spec="topk:0.1", rule=median_rule)
    rounds = [{node_of(ex) for ex in exchanges} for exchanges in run.rounds]
    assert all(len(s) == 2 for s in rounds)
    seen: set[int] = set()
    returned = 0
    for k, sampled in enumerate(rounds):
        before = set(seen)
        seen |= sampled
        snap = snaps[k]
        # every copy, stale or fresh, is one row of the aggregate, in node-id order
        assert run.metrics[k]["copies"] == len(seen) == len(snap.copies)
        rows = spy.calls[k]
        assert rows.shape == (len(seen), D)
        torch.testing.assert_close(
            rows.double(), torch.stack([snap.copies[n] for n in sorted(seen)]), atol=0, rtol=0
        )
        for node in sorted(seen - sampled):  # stale: unchanged since the previous round
            assert torch.equal(snap.copies[node], snaps[k - 1].copies[node])
        got = kinds(run.rounds[k])
        for node in sampled:
            assert got[node] == ("payload" if node in before else "grad")
            if node in before and node not in rounds[k - 1]:
                returned += 1  # missed at least one round and came back
        assert_in_sync(snap, seen)
    assert returned >= 2, rounds
    assert len(spy.calls) == 8


# --- 6. lost and rejected replies, lost client state ---------------------------------------


def _nan_payload(ins: Message, reply: Message) -> Message:
    return replace_arrays(
        reply, lambda rec, key, a: np.full_like(a, np.nan) if key == "values" else a, ins
    )


def test_lost_and_rejected_replies_roll_back_and_wiped_state_resets():
    a, b, c, d, e = NODES
    net = Network(NODES)

    def tamper(rnd: int, ins: Message, reply: Message):
        node = int(ins.metadata.dst_node_id)
        if rnd == 1 and node == e:
            return None  # a lost first reset: E resets again in round 2
        if rnd == 2 and node == a:
            return None  # lost payload
        if rnd == 3 and node == b:
            return _nan_payload(ins, reply)  # rejected payload
        if rnd in (4, 5) and node == d:
            return None  # lost twice in a row
        if rnd == 3 and node == c:  # C's node loses its state after answering round 3
            net.contexts[c] = Context(
                run_id=1, node_id=c, node_config={}, state=RecordDict(), run_config={}
            )
        return reply

    net.tamper = tamper
    # C's second reset comes 3 rounds after its first: allowed by reset_interval=3 (the
    # default limit refuses it for a while: test_a_reset_too_soon_waits_for_the_limit)
    run, snaps = go(make(eta=0.3, reset_interval=3), net, 7)
    replay(run, net, snaps, eta=0.3, spec="topk:0.1", rule=median_rule, wiped={3: {c}})
    got = [kinds(r) for r in run.rounds]
    m = run.metrics
    # round 1: E's reset lost; round 2: E resets again (still version -1), A's payload lost
    assert m[0]["accepted"] == 4 and m[0]["resets"] == 4 and m[0]["rejected"] == 0
    assert m[0]["copies"] == 4 and e not in snaps[0].copies
    assert got[1][e] == "grad" and version_sent(run.rounds[1], e) == -1
    assert m[1]["resets"] == 1 and m[1]["accepted"] == 4 and m[1]["copies"] == 5
    # A's g ran one step ahead of the server's copy, then rolled back: a payload, in sync
    assert not torch.equal(snaps[1].client_g[a], snaps[1].copies[a])
    assert snaps[1].client_count[a] == snaps[1].versions[a] + 1
    assert got[2][a] == "payload"
    assert_in_sync(snaps[2], [a])
    # B's NaN payload rejected in round 3, B in sync again in round 4
    assert m[2]["rejected-non-finite"] == 1 and m[2]["rejected"] == 1
    assert not torch.equal(snaps[2].client_g[b], snaps[2].copies[b])
    assert got[3][b] == "payload"
    assert_in_sync(snaps[3], [b])
    # C lost its state: a dense reset in round 4 that the server takes
    assert got[3][c] == "grad" and m[3]["resets"] == 1
    assert version_sent(run.rounds[3], c) == 2  # replies applied before, minus one
    assert_in_sync(snaps[3], [c])
    assert snaps[3].versions[c] == 3 and snaps[3].client_count[c] == 3
    # D lost rounds 4 and 5, answers a payload in round 6 and is in sync
    assert got[5][d] == "payload"
    assert_in_sync(snaps[5], NODES)
    assert_in_sync(snaps[6], NODES)


# --- 7. a Byzantine c_i moves only its own copy ---------------------------------------------


def test_byzantine_payload_moves_only_its_own_copy():
    byz, attacked = NODES[1], 3
    net = Network(NODES)
    tampered: dict[str, Message] = {}

    def tamper(rnd: int, ins: Message, reply: Message) -> Message:
        if rnd != attacked or int(ins.metadata.dst_node_id) != byz:
            return reply
        bad = replace_arrays(reply, lambda rec, key, a: a * 1e4 if key == "values" else a, ins)
        tampered["msg"] = bad
        return bad

    net.tamper = tamper
    run, snaps = go(make(eta=0.3), net, 6)
    ref = replay(run, net, snaps, eta=0.3, spec="topk:0.1", rule=median_rule, accept=everything)
    honest = next(ex.honest for ex in run.rounds[attacked - 1] if node_of(ex) == byz)
    offset = decode(tampered["msg"]) - decode(honest)
    assert float(offset.abs().max()) > 10.0
    before, after = snaps[attacked - 2], snaps[attacked - 1]
    for ex in run.rounds[attacked - 1]:
        node = node_of(ex)
        step = after.copies[node] - before.copies[node]
        want = decode(ex.sent[0])
        torch.testing.assert_close(step, want, atol=1e-6, rtol=1e-6)
        if node != byz:
            torch.testing.assert_close(step, decode(ex.honest), atol=1e-6, rtol=1e-6)
    for k in range(attacked - 1, 6):
        snap = snaps[k]
        assert_in_sync(snap, [n for n in NODES if n != byz])
        # the Byzantine copy stays off the client's g by exactly the forged part
        torch.testing.assert_close(
            snap.copies[byz] - snap.client_g[byz], offset, atol=1e-3, rtol=1e-5
        )
        torch.testing.assert_close(snap.client_g[byz], ref.client_g[k][byz], atol=ATOL, rtol=0)
    assert all(bool(torch.isfinite(x).all()) and float(x.abs().max()) < 10 for x in run.arrays)


def test_one_byzantine_node_cannot_overflow_its_copy_and_stop_training():
    byz = NODES[1]

    def tamper(rnd: int, ins: Message, reply: Message) -> Message:
        if rnd not in (2, 3) or int(ins.metadata.dst_node_id) != byz:
            return reply

        def forge(rec: str, key: str, a: np.ndarray) -> np.ndarray:
            if key == "values":
                return np.full_like(a, 3e38)  # finite float32: passes validation
            if key == "indices":
                return np.arange(len(a), dtype=a.dtype)  # the same coordinates twice
            return a

        return replace_arrays(reply, forge, ins)

    net = Network(NODES, tamper=tamper)
    run, snaps = go(make(eta=0.3), net, 5)  # Median over 5 copies: 1 Byzantine is tolerated
    assert run.metrics[1]["accepted"] == len(NODES)  # the forged payload is a valid message
    for k in range(5):
        assert all(bool(torch.isfinite(snaps[k].copies[n]).all()) for n in NODES), k
        assert run.metrics[k]["skipped"] == 0, k
    assert not torch.allclose(run.arrays[4], run.arrays[2])  # training goes on


# --- 8. validation -------------------------------------------------------------------------------


def _wrong_seed(ins: Message, reply: Message) -> Message:
    return replace_arrays(reply, lambda rec, key, a: a + 1 if key == "seed" else a, ins)


def _error(ins: Message, reply: Message) -> Message:
    return Message(Error(code=3, reason="boom"), reply_to=ins)


def _unknown(ins: Message, reply: Message) -> list[Message]:
    return [reply, stranger(ins, reply)]


def _duplicate(ins: Message, reply: Message) -> list[Message]:
    return [reply, Message(reply.content, reply_to=ins)]


BAD: dict[str, tuple[str, Callable]] = {
    "malformed": ("randk:0.25", _wrong_seed),
    "non-finite": ("randk:0.25", _nan_payload),
    "error-reply": ("topk:0.1", _error),
    "unknown-node": ("topk:0.1", _unknown),
    "duplicate": ("topk:0.1", _duplicate),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_rejection_is_counted_and_the_client_recovers(reason: str):
    spec, bad = BAD[reason]
    victim = NODES[2]

    def tamper(rnd: int, ins: Message, reply: Message):
        if rnd in (2, 4) and int(ins.metadata.dst_node_id) == victim:
            return bad(ins, reply)
        return reply

    net = Network(NODES, tamper=tamper)
    run, snaps = go(make(compressor=spec, eta=0.3), net, 5)
    counts_as_loss = reason not in ("unknown-node", "duplicate")
    replay(
        run,
        net,
        snaps,
        eta=0.3,
        spec=spec,
        rule=median_rule,
        accept=untampered,
    )
    for k, m in enumerate(run.metrics):
        hit = k + 1 in (2, 4)
        assert m.get(f"rejected-{reason}", 0) == int(hit)
        assert m["rejected"] == int(hit)
        assert m["accepted"] == len(NODES) - int(hit and counts_as_loss)
        assert m["skipped"] == 0 and m["sampled"] == len(NODES) and m["copies"] == len(NODES)
        assert {"accepted", "rejected", "resets", "copies", "sampled", "skipped"} <= set(m)
        assert "train-loss" in m
    for k in (2, 4):  # the round after a rejection: a payload (rollback), in sync again
        assert kinds(run.rounds[k])[victim] == "payload"
        assert_in_sync(snaps[k], NODES)
    if counts_as_loss:
        assert snaps[1].client_count[victim] == snaps[1].versions[victim] + 1


def test_payload_from_a_node_without_a_copy_is_malformed():
    victim = NODES[0]
    topk = get_compressor("topk:0.1")

    def tamper(rnd: int, ins: Message, reply: Message):
        if rnd == 1 and int(ins.metadata.dst_node_id) == victim:  # a payload instead of a reset
            dense = vec(reply.content["grad"]).to(torch.float32)
            content = RecordDict(
                {
                    "payload": payload_record(topk.compress(dense, 0)),
                    "metrics": MetricRecord({"train-loss": 1.0, "num-examples": 20}),
                }
            )
            return Message(content, reply_to=ins)
        return reply

    net = Network(NODES, tamper=tamper)
    run, snaps = go(make(), net, 3)
    replay(run, net, snaps, eta=ETA, spec="topk:0.1", rule=median_rule)
    m = run.metrics
    assert m[0]["rejected-malformed"] == 1 and m[0]["accepted"] == 4 and m[0]["copies"] == 4
    assert victim not in snaps[0].copies
    assert version_sent(run.rounds[1], victim) == -1
    assert kinds(run.rounds[1])[victim] == "grad" and m[1]["resets"] == 1
    assert_in_sync(snaps[1], NODES)
    assert_in_sync(snaps[2], NODES)


def test_a_rule_that_cannot_run_on_every_copy_is_refused_before_round_one():
    net = Network(NODES[:4])  # TrimmedMean(f=2) needs n > 4 copies: never reached
    with pytest.raises(SampleTooSmallError, match=r"at least 5 .* at most 4 copies"):
        go(make(aggregator="trimmedmean", f=2), net, 3)


def test_a_rule_that_cannot_run_skips_the_step_but_keeps_the_copies():
    nodes = NODES[:4]  # TrimmedMean(f=2) needs n > 4
    net = Network(nodes)
    strategy = make(aggregator="trimmedmean", f=2)
    strategy.check_sample = lambda connected: None  # as if nodes were lost after the check
    run, snaps = go(strategy, net, 3)
    replay(run, net, snaps, eta=ETA, spec="topk:0.1", rule=trimmed_rule(2))
    for k in range(3):
        assert run.metrics[k]["skipped"] == 1 and run.metrics[k]["accepted"] == 4
        assert torch.equal(run.arrays[k], run.x0)
        assert_in_sync(snaps[k], nodes)


def test_no_valid_reply_in_round_one_skips_then_everyone_resets():
    def tamper(rnd: int, ins: Message, reply: Message):
        return _error(ins, reply) if rnd == 1 else reply

    net = Network(NODES, tamper=tamper)
    run, snaps = go(make(), net, 3)
    m = run.metrics
    assert m[0]["skipped"] == 1 and m[0]["copies"] == 0 and m[0]["accepted"] == 0
    assert m[0]["rejected-error-reply"] == len(NODES)
    assert torch.equal(run.arrays[0], run.x0)
    assert m[1]["resets"] == len(NODES) and m[1]["skipped"] == 0
    replay(run, net, snaps, eta=ETA, spec="topk:0.1", rule=median_rule)


# --- 9. BR-CSGD -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "aggregator"), [("topk:0.1", "mean"), ("randk:0.25", "mean"), ("topk:0.5", "median")]
)
def test_brcsgd_matches_robust_compressed_sgd(spec: str, aggregator: str):
    # (the coordinate median of sparse rows with different supports is mostly 0: TopK(0.5))
    net = Network(NODES)
    strategy = BRCSGD(aggregator=aggregator, lr=LR, compressor=spec, batch_size=BATCH, seed=SEED)
    run = run_strategy(strategy, net, 4, watch=("x",))
    x = run.x0.clone()
    for k, exchanges in enumerate(run.rounds):
        rows = {}
        for ex in exchanges:
            node = node_of(ex)
            cfg = config_of(ex.ins)
            assert cfg["op"] == "grad" and cfg["compressor"] == spec
            assert cfg["batch-size"] == BATCH and "ef21-version" not in cfg
            torch.testing.assert_close(vec(ex.ins.content["arrays"]), x, atol=ATOL, rtol=0)
            data_x, data_y = net.data[node]
            idx = minibatch(len(data_y), BATCH, cfg["batch-seed"])
            c = compress_by_hand(
                spec, model_grad(x, data_x[idx], data_y[idx]), cfg["compressor-seed"]
            )
            assert set(ex.honest.content.array_records) == {"payload"}
            if spec.startswith("randk"):
                seed = int(ex.honest.content["payload"]["seed"].numpy().reshape(-1)[0])
                assert seed == cfg["compressor-seed"]
            torch.testing.assert_close(decode(ex.honest), c, atol=ATOL, rtol=1e-5)
            rows[node] = c
        x = x - LR * RULES[aggregator](torch.stack([rows[n] for n in sorted(rows)]))
        torch.testing.assert_close(run.arrays[k], x, atol=ATOL, rtol=1e-6)
        m = run.metrics[k]
        assert m["accepted"] == len(NODES) and m["skipped"] == 0 and m["sampled"] == len(NODES)
    assert not torch.allclose(run.arrays[-1], run.x0, atol=1e-3)


def test_brcsgd_rejects_a_randk_payload_with_a_wrong_seed():
    victim = NODES[1]

    def tamper(rnd: int, ins: Message, reply: Message):
        if rnd == 2 and int(ins.metadata.dst_node_id) == victim:
            return _wrong_seed(ins, reply)
        return reply

    net = Network(NODES, tamper=tamper)
    strategy = BRCSGD(aggregator="mean", lr=LR, compressor="randk:0.25", batch_size=BATCH)
    run = run_strategy(strategy, net, 2, watch=("x",))
    assert run.metrics[1]["rejected-malformed"] == 1 and run.metrics[1]["accepted"] == 4
    rows = [decode(ex.sent[0]) for ex in run.rounds[1] if node_of(ex) != victim]
    want = run.arrays[0] - LR * mean_rule(torch.stack(rows))
    torch.testing.assert_close(run.arrays[1], want, atol=ATOL, rtol=1e-6)


# --- 10. constructor -------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, -0.1, 1.01, 2.0, math.nan])
def test_eta_outside_zero_one_is_rejected(eta: float):
    with pytest.raises(ValueError, match="eta"):
        ByzEF21SGDM(eta=eta)


@pytest.mark.parametrize("eta", [1e-6, 0.5, 1.0])
def test_eta_inside_zero_one_is_accepted(eta: float):
    assert ByzEF21SGDM(eta=eta).eta == eta


@pytest.mark.parametrize("spec", ["bogus", "topk:2.0", "randk:0", "qsgd", "qsgd:0", "topk:"])
@pytest.mark.parametrize("cls", [ByzEF21SGDM, ByzEF21, BRCSGD])
def test_bad_compressor_spec_is_rejected(cls: type, spec: str):
    with pytest.raises(ValueError):
        cls(compressor=spec)


def test_defaults():
    s = ByzEF21SGDM()
    assert s.eta == 0.1 and s.lr == 0.05 and s.batch_size == 32
    assert s.codec.spec == "topk:0.1" and s.compressor == get_compressor("topk:0.1")
    assert ByzEF21().eta == 1.0
    assert BRCSGD(compressor="randk:0.5").compressor == get_compressor("randk:0.5")


# --- 11. dense resets: rate limit, norm bound, labels -------------------------------------------


def dense_reset(ins: Message, vector: torch.Tensor) -> Message:
    """A dense reset reply: ``{"grad": vector}`` in the model's layout (what a client sends on
    first contact), with the usual metrics."""
    content = RecordDict(
        {
            "grad": unflatten(vector.to(torch.float32), layout_of(ins.content["arrays"])),
            "metrics": MetricRecord({"train-loss": 1.0, "num-examples": 20}),
        }
    )
    return Message(content, reply_to=ins)


def forged(rnd: int) -> torch.Tensor:
    """The Byzantine node's reset of round ``rnd``: a different, moderate vector every round."""
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64) * (1.0 + rnd)


@pytest.mark.parametrize("interval", [None, 3, 0])
def test_dense_resets_every_round_are_refused_beyond_the_limit(interval: int | None):
    byz, rounds = NODES[1], 12
    net = Network(NODES)

    def tamper(rnd: int, ins: Message, reply: Message) -> Message:
        if int(ins.metadata.dst_node_id) != byz:
            return reply
        return dense_reset(ins, forged(rnd))

    net.tamper = tamper
    options = {} if interval is None else {"reset_interval": interval}
    run, snaps = go(make(**options), net, rounds)
    # the default: one per 10 rounds; 0: no limit (every round)
    taken = {None: [1, 11], 3: [1, 4, 7, 10], 0: list(range(1, rounds + 1))}[interval]
    honest = [n for n in NODES if n != byz]
    copy = None
    for k, m in enumerate(run.metrics):
        rnd = k + 1
        if rnd in taken:
            copy = forged(rnd)
            assert m["resets"] == (len(NODES) if rnd == 1 else 1), rnd
            assert m["rejected"] == 0 and m["accepted"] == len(NODES), rnd
        else:
            assert m["resets"] == 0, rnd
            assert m["rejected"] == m["rejected-reset-limit"] == 1, rnd
            assert m["accepted"] == len(NODES) - 1, rnd
        assert snaps[k].versions[byz] == len([r for r in taken if r <= rnd]) - 1
        torch.testing.assert_close(snaps[k].copies[byz], copy, atol=1e-6, rtol=1e-6)
        assert_in_sync(snaps[k], honest)
        assert m["copies"] == len(NODES) and m["skipped"] == 0


def _refused_lines(caplog: pytest.LogCaptureFixture, reason: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f": {reason} (" in r.getMessage()]


def test_a_refused_reset_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture):
    byz = NODES[1]

    def tamper(rnd: int, ins: Message, reply: Message) -> Message:
        return dense_reset(ins, forged(rnd)) if int(ins.metadata.dst_node_id) == byz else reply

    go(make(), Network(NODES, tamper=tamper), 2)
    lines = _refused_lines(caplog, "reset-limit")
    assert len(lines) == 1 and f"round 2: rejected the reply of node {byz}" in lines[0]
    assert "within 10 rounds of the last one taken (round 1)" in lines[0]


def test_a_huge_norm_reset_is_refused_and_the_node_joins_later(caplog: pytest.LogCaptureFixture):
    byz = NODES[1]
    huge = torch.full((D,), 1e29, dtype=torch.float64)

    def tamper(rnd: int, ins: Message, reply: Message) -> Message:
        if int(ins.metadata.dst_node_id) != byz or rnd not in (1, 4):
            return reply
        return dense_reset(ins, huge * rnd)  # round 4: allowed by the rate, not by the norm

    net = Network(NODES, tamper=tamper)
    run, snaps = go(make(eta=0.3, reset_interval=2), net, 6)
    replay(run, net, snaps, eta=0.3, spec="topk:0.1", rule=median_rule, accept=untampered)
    m = run.metrics
    assert m[0]["rejected-reset-norm"] == 1 and m[0]["resets"] == len(NODES) - 1
    assert byz not in snaps[0].copies and m[0]["copies"] == len(NODES) - 1
    assert version_sent(run.rounds[1], byz) == -1
    assert kinds(run.rounds[1])[byz] == "grad" and m[1]["resets"] == 1  # its honest reset
    assert m[3]["rejected-reset-norm"] == 1 and m[3]["resets"] == 0
    assert kinds(run.rounds[4])[byz] == "payload"  # rolled back, not reset: in sync again
    assert_in_sync(snaps[5], NODES)
    assert all(float(c.abs().max()) < 1e3 for s in snaps for c in s.copies.values())
    assert len(_refused_lines(caplog, "reset-norm")) == 2
    # without the bound (the old behaviour) the same reset becomes the node's copy
    net = Network(NODES, tamper=tamper)
    run, snaps = go(make(eta=0.3, reset_interval=2, reset_norm_bound=0), net, 1)
    assert run.metrics[0]["resets"] == len(NODES) and float(
        snaps[0].copies[byz].max()
    ) == pytest.approx(1e29, rel=1e-6)


def test_a_reset_too_soon_waits_for_the_limit():
    """An honest node that loses its state in round 3 resets from round 4 on; the default
    limit refuses it until round 11 (10 rounds after its first), its stale copy is aggregated
    meanwhile, then it is taken and the node is in sync."""
    c, rounds = NODES[2], 12
    net = Network(NODES)

    def tamper(rnd: int, ins: Message, reply: Message) -> Message:
        if rnd == 3 and int(ins.metadata.dst_node_id) == c:
            net.contexts[c] = Context(
                run_id=1, node_id=c, node_config={}, state=RecordDict(), run_config={}
            )
        return reply

    net.tamper = tamper
    run, snaps = go(make(eta=0.3), net, rounds)
    refused = {id(ex) for r in run.rounds[3:10] for ex in r if node_of(ex) == c}

    def accept(ex: Exchange, msg: Message) -> bool:
        return id(ex) not in refused

    replay(
        run, net, snaps, eta=0.3, spec="topk:0.1", rule=median_rule, accept=accept, wiped={3: {c}}
    )
    for k in range(3, 10):
        assert kinds(run.rounds[k])[c] == "grad"
        assert run.metrics[k]["rejected-reset-limit"] == 1 and run.metrics[k]["resets"] == 0
        assert torch.equal(snaps[k].copies[c], snaps[2].copies[c])  # the stale copy
    assert kinds(run.rounds[10])[c] == "grad" and run.metrics[10]["resets"] == 1
    assert kinds(run.rounds[11])[c] == "payload" and run.metrics[11]["rejected"] == 0
    assert_in_sync(snaps[10], NODES)
    assert_in_sync(snaps[11], NODES)


def test_a_lost_reset_is_taken_again_and_later_replies_keep_their_labels():
    """E's first reset is lost; in round 2 E resets (taken: the server has no copy) and a
    payload of E arrives too (a ``duplicate``, not an ``unknown-node``); E's NaN payload in
    round 3 is ``non-finite``; E is in sync afterwards."""
    e = NODES[4]
    topk = get_compressor("topk:0.1")

    def tamper(rnd: int, ins: Message, reply: Message):
        if int(ins.metadata.dst_node_id) != e:
            return reply
        if rnd == 1:
            return None
        if rnd == 2:
            dense = vec(reply.content["grad"]).to(torch.float32)
            extra = RecordDict(
                {
                    "payload": payload_record(topk.compress(dense, 0)),
                    "metrics": MetricRecord({"train-loss": 1.0, "num-examples": 20}),
                }
            )
            return [reply, Message(extra, reply_to=ins)]
        if rnd == 3:
            return _nan_payload(ins, reply)
        return reply

    net = Network(NODES, tamper=tamper)
    run, snaps = go(make(eta=0.3), net, 5)
    replay(run, net, snaps, eta=0.3, spec="topk:0.1", rule=median_rule, accept=untampered)
    m = run.metrics
    assert m[1]["resets"] == 1 and m[1]["rejected"] == m[1]["rejected-duplicate"] == 1
    assert m[2]["rejected"] == m[2]["rejected-non-finite"] == 1
    assert not any(key.startswith("rejected-unknown") for r in m for key in r)
    assert kinds(run.rounds[3])[e] == "payload" and m[3]["rejected"] == 0
    assert_in_sync(snaps[3], NODES)
    assert_in_sync(snaps[4], NODES)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"reset_interval": -1}, "reset_interval"),
        ({"reset_interval": 2.5}, "reset_interval"),
        ({"reset_interval": math.inf}, "reset_interval"),
        ({"reset_interval": "3"}, "reset_interval"),
        ({"reset_norm_bound": -1.0}, "reset_norm_bound"),
        ({"reset_norm_bound": math.nan}, "reset_norm_bound"),
    ],
)
def test_bad_reset_limits_are_rejected(options: dict, match: str):
    with pytest.raises(ValueError, match=match):
        ByzEF21SGDM(**options)


def test_reset_limit_defaults_and_the_baseline_takes_them():
    s = ByzEF21SGDM()
    assert (s.reset_interval, s.reset_norm_bound) == (10, 100.0)
    b = ByzEF21(reset_interval=0, reset_norm_bound=0)
    assert (b.reset_interval, b.reset_norm_bound) == (0, 0.0)
    assert b.options()["reset interval"] == "no limit"


@pytest.mark.parametrize("per_round", [None, 2])
def test_honest_runs_are_the_same_with_and_without_the_limits(per_round: int | None):
    """No honest reset is refused (first contacts, late ones under sampling too): the defaults
    give bitwise the numbers of the limits off, the behaviour before them."""
    runs = []
    for options in ({}, {"reset_interval": 0, "reset_norm_bound": 0}):
        run, snaps = go(make(clients_per_round=per_round, **options), Network(NODES), 6)
        runs.append((run, snaps))
    (a, sa), (b, sb) = runs
    assert all(torch.equal(x, y) for x, y in zip(a.arrays, b.arrays, strict=True))
    assert a.metrics == b.metrics and not any(
        k.startswith("rejected-") for m in a.metrics for k in m
    )
    assert sum(m["resets"] for m in a.metrics) == len(NODES)  # every node's first contact
    for s, t in zip(sa, sb, strict=True):
        assert s.copies.keys() == t.copies.keys()
        assert all(torch.equal(s.copies[n], t.copies[n]) for n in s.copies)
