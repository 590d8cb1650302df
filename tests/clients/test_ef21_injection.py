"""Attacks on Byz-EF21-SGDM's compressed replies. The server adds each reply ``c_i`` to its
copy ``g_i`` and aggregates the copies, so an adversary that is bound to the strategy's attack
surface (``ByzantineGrid.bind``) forges the aggregated ``g_i + c_i`` and sends
``C(forged - g_i)``; unbound, it forges ``c_i`` itself (the old behaviour). Client side,
``byzantine_mod`` does the same with the node's stored previous ``g`` (its ``node_surface``) and
keeps the node's ``g`` equal to the server's.

Nodes are GradientClients on ``gradient_helpers.make_net`` (d = 107) on a LocalGrid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from flwr_byz.attacks import ALIE, IPM, SignFlip, honest_stats
from flwr_byz.clients import ByzantineGrid, byzantine_app, byzantine_mod
from flwr_byz.clients.injection import target_of
from flwr_byz.clients.mods import node_surface
from flwr_byz.clients.state import load_vector
from flwr_byz.compressors import get_compressor
from flwr_byz.protocol.records import flatten, record_payload
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import ByzEF21SGDM

from .gradient_helpers import (
    context,
    make_client,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    point,
    train_message,
)

NODES = [21, 22, 23, 24, 25, 26]
BYZ = (22, 25)
HONEST = [n for n in NODES if n not in BYZ]
D = 107


@dataclass
class Round:
    """One server round: the copies before and after, the honest (pre-attack) records of
    every node's reply, and the compressor seeds sent."""

    before: dict[int, torch.Tensor]
    after: dict[int, torch.Tensor]
    raw: dict[int, dict[str, ArrayRecord]]
    seeds: dict[int, int]
    metrics: dict = field(default_factory=dict)
    stored: dict[int, torch.Tensor | None] = field(default_factory=dict)  # each node's ef21-g


class Nodes:
    """The nodes ``NODES`` on a LocalGrid (``grid``): each answers through the GradientClient
    (or ``wrap(msg, ctx, honest)``) with its own persistent Context, its ``node_config``
    extended by ``node_config(node)``; the records of every reply are kept before anything
    downstream rewrites them (write_back replaces records, never mutates)."""

    def __init__(
        self,
        node_config: Callable[[int], dict] = lambda n: {},
        wrap: Callable | None = None,
    ) -> None:
        self.client = make_client()
        self.grid = LocalGrid(NODES, self.answer)
        self.contexts = self.grid.contexts
        for node, ctx in self.contexts.items():
            ctx.node_config.update(node_config(node))
        self.raw: dict[int, dict[str, ArrayRecord]] = {}
        self.wrap = wrap

    def honest(self, msg: Message, ctx: Context) -> Message:
        reply = self.client.handle(msg, ctx)
        self.raw[int(msg.metadata.dst_node_id)] = dict(reply.content.array_records)
        return reply

    def answer(self, msg: Message, ctx: Context) -> Message:
        if self.wrap is None:
            return self.honest(msg, ctx)
        return self.wrap(msg, ctx, self.honest)


def strategy(spec: str) -> ByzEF21SGDM:
    return ByzEF21SGDM("mean", compressor=spec, eta=0.5, lr=0.2, batch_size=4, seed=3)


def run(
    strat: ByzEF21SGDM,
    grid: LocalGrid | ByzantineGrid,
    nodes: Nodes,
    rounds: int,
    before_round: Callable[[int], None] = lambda r: None,
) -> list[Round]:
    arrays: ArrayRecord | None = ArrayRecord(point(1))
    out = []
    for server_round in range(1, rounds + 1):
        before_round(server_round)
        assert arrays is not None
        msgs = list(strat.configure_train(server_round, arrays, ConfigRecord({}), grid))
        before = {n: g.clone() for n, g in strat.copies.items()}
        nodes.raw = {}
        replies = list(grid.send_and_receive(msgs))
        arrays, metrics = strat.aggregate_train(server_round, replies)
        assert metrics is not None
        after = {n: g.clone() for n, g in strat.copies.items()}
        key = {"state-key": strat.state_key}
        stored = {n: load_vector(ctx, key, "ef21-g") for n, ctx in nodes.contexts.items()}
        out.append(Round(before, after, nodes.raw, dict(strat._seeds), dict(metrics), stored))
    return out


def dense(raw: dict[str, ArrayRecord]) -> torch.Tensor:
    assert "payload" not in raw
    return flatten(raw["grad"])


def compressed(spec: str, raw: dict[str, ArrayRecord]) -> torch.Tensor:
    assert "grad" not in raw
    return get_compressor(spec).decompress(record_payload(raw["payload"]), D)


def bound_grid(
    spec: str, attack: object, nodes: Nodes, bind: bool = True
) -> tuple[ByzEF21SGDM, ByzantineGrid]:
    strat = strategy(spec)
    grid = ByzantineGrid(nodes.grid, attack, node_ids=BYZ)  # type: ignore[arg-type]
    if bind:
        assert grid.bind(strat) is grid
    return strat, grid


def expected_sign_flip_copy(spec: str, g_old: torch.Tensor, c: torch.Tensor, seed: int):
    """``g_old + C(-(g_old + c) - g_old)``: the attack forges the aggregated g."""
    comp = get_compressor(spec)
    return g_old + comp.decompress(comp.compress(-(g_old + c) - g_old, seed), D)


# --- ByzantineGrid bound to the strategy ----------------------------------------------------


def test_the_bound_surface_adds_a_compressed_reply_to_the_servers_copy() -> None:
    nodes = Nodes()
    strat, grid = bound_grid("topk:0.1", SignFlip(), nodes)
    surface = grid.surface
    assert surface is not None
    v = torch.linspace(-1, 1, D)
    strat.configure_train(1, ArrayRecord(point(1)), ConfigRecord({}), nodes.grid)
    # no copy before the first (dense) reply: the vector itself
    assert surface.aggregated(NODES[0], v, compressed=True) is v
    run(strat, grid, nodes, 1)  # round 1 again (the strategy starts over): the dense resets
    for n in NODES:
        assert torch.equal(surface.aggregated(n, v, compressed=True), strat.copies[n] + v)
        assert torch.equal(surface.to_wire(n, v, compressed=True), v - strat.copies[n])
        assert surface.aggregated(n, v) is v  # a dense reply is a reset: taken as it is
    assert surface.aggregated(999, v, compressed=True) is v


@pytest.mark.parametrize("spec", ["topk:0.1", "topk:0.02"])
def test_sign_flip_forges_the_aggregated_copy_with_topk(spec: str) -> None:
    nodes = Nodes()
    strat, grid = bound_grid(spec, SignFlip(), nodes)
    rounds = run(strat, grid, nodes, 3)
    assert all(r.metrics["accepted"] == 6 and r.metrics["rejected"] == 0 for r in rounds)
    assert grid.attacked_replies == 6  # two Byzantine replies per round
    for r in rounds[1:]:
        for b in BYZ:
            g_old, c = r.before[b], compressed(spec, r.raw[b])
            assert c.abs().max() > 1e-4  # a real honest step
            want = expected_sign_flip_copy(spec, g_old, c, r.seeds[b])
            torch.testing.assert_close(r.after[b], want)
            # the forged step is itself a TopK vector (the wire format is kept)
            k = get_compressor(spec).k_for(D)  # type: ignore[attr-defined]
            assert int((r.after[b] - g_old != 0).sum()) <= k
            # and it is not the old behaviour (-c added to the copy)
            assert (r.after[b] - (g_old - c)).abs().max() > 1e-3
        for h in HONEST:
            torch.testing.assert_close(r.after[h], r.before[h] + compressed(spec, r.raw[h]))


def test_sign_flip_without_compression_negates_the_honest_copy() -> None:
    nodes = Nodes()
    strat, grid = bound_grid("none", SignFlip(), nodes)
    rounds = run(strat, grid, nodes, 3)
    for r in rounds[1:]:
        for b in BYZ:
            honest_g_new = r.before[b] + compressed("none", r.raw[b])  # what honesty sends
            torch.testing.assert_close(r.after[b], -honest_g_new, rtol=1e-6, atol=1e-6)


def test_unbound_grid_attacks_the_message_not_the_copy() -> None:
    """Without ``bind`` (no offset) SignFlip negates ``c``: the copy becomes ``g_old - c``;
    bound, it becomes ``-(g_old + c)``. Same nodes, same seeds: round 1 is identical."""
    spec = "none"
    nodes_u, nodes_b = Nodes(), Nodes()
    unbound = run(*bound_grid(spec, SignFlip(), nodes_u, bind=False), nodes_u, 2)
    bound = run(*bound_grid(spec, SignFlip(), nodes_b, bind=True), nodes_b, 2)
    for b in BYZ:
        torch.testing.assert_close(unbound[0].after[b], bound[0].after[b])  # dense round 1
        r = unbound[1]
        g_old, c = r.before[b], compressed(spec, r.raw[b])
        torch.testing.assert_close(r.after[b], g_old - c)
        rb = bound[1]
        torch.testing.assert_close(
            rb.after[b], -(rb.before[b] + compressed(spec, rb.raw[b])), rtol=1e-6, atol=1e-6
        )
        assert (r.after[b] - rb.after[b]).abs().max() > 1e-2


def test_unbound_grid_with_topk_sends_the_flipped_message() -> None:
    spec = "topk:0.1"
    nodes = Nodes()
    rounds = run(*bound_grid(spec, SignFlip(), nodes, bind=False), nodes, 2)
    r = rounds[1]
    for b in BYZ:
        torch.testing.assert_close(r.after[b], r.before[b] - compressed(spec, r.raw[b]))


@pytest.mark.parametrize("attack", [ALIE(z=1.5), IPM(eps=0.5)], ids=["alie", "ipm"])
def test_omniscient_attack_sees_the_honest_copies(attack: object) -> None:
    """Compressor none: every Byzantine copy after the round is the attack applied to the
    honest nodes' reconstructed ``g_i + c_i`` (= their copies after the round)."""
    nodes = Nodes()
    strat, grid = bound_grid("none", attack, nodes)
    rounds = run(strat, grid, nodes, 3)
    for r in rounds:
        honest_rows = torch.stack([r.after[h] for h in HONEST])
        own = torch.stack([r.after[b] for b in BYZ])
        want = attack(honest_rows, own)  # type: ignore[operator]
        for i, b in enumerate(BYZ):
            torch.testing.assert_close(r.after[b], want[i], rtol=1e-5, atol=1e-6)
    # explicit formulas on the last (compressed) round
    r = rounds[-1]
    honest_rows = torch.stack([r.before[h] + compressed("none", r.raw[h]) for h in HONEST])
    if isinstance(attack, ALIE):
        mu, sigma = honest_stats(honest_rows)
        want_row = mu - 1.5 * sigma
    else:
        want_row = -0.5 * honest_rows.mean(dim=0)
    for b in BYZ:
        torch.testing.assert_close(r.after[b], want_row, rtol=1e-5, atol=1e-6)
        if isinstance(attack, IPM):
            continue  # linear: forging c from a forged copy gives the same vector
        # not the attack on the messages c (what an unbound grid would forge)
        c_rows = torch.stack([compressed("none", r.raw[h]) for h in HONEST])
        wrong = r.before[b] + attack(c_rows, c_rows[:1])[0]  # type: ignore[operator]
        assert (r.after[b] - wrong).abs().max() > 1e-3


def test_dense_resets_are_attacked_as_plain_vectors() -> None:
    """Round 1 (no copies yet) and a later reset of a node that lost its state (the server
    has a copy, which the surface leaves out of a dense reply): the dense vector itself is
    flipped."""
    nodes = Nodes()
    strat, grid = bound_grid("topk:0.1", SignFlip(), nodes)
    strat.reset_interval = 2  # the second reset 2 rounds after the first (default limit: 10)
    lost = BYZ[0]

    def forget(server_round: int) -> None:
        if server_round == 3:  # the node lost its context.state: it resets (dense)
            nodes.contexts[lost].state = RecordDict()

    rounds = run(strat, grid, nodes, 3, before_round=forget)
    for b in BYZ:
        v = dense(rounds[0].raw[b])
        torch.testing.assert_close(rounds[0].after[b], -v, rtol=0, atol=0)
    for h in HONEST:
        torch.testing.assert_close(rounds[0].after[h], dense(rounds[0].raw[h]), rtol=0, atol=0)
    r = rounds[2]
    assert r.metrics["resets"] == 1 and r.metrics["rejected"] == 0
    assert lost in r.before and lost in strat.copies  # the server held a copy of the node
    v = dense(r.raw[lost])
    torch.testing.assert_close(r.after[lost], -v, rtol=0, atol=0)  # not -(g_old + v) - ...
    other = BYZ[1]  # the other Byzantine node stayed compressed
    c = compressed("topk:0.1", r.raw[other])
    want = expected_sign_flip_copy("topk:0.1", r.before[other], c, r.seeds[other])
    torch.testing.assert_close(r.after[other], want)


def test_node_surface_ignores_the_copy_for_a_dense_reply() -> None:
    msg = train_message(
        point(1), node=3, op="momentum", beta=0.5, compressor="topk:0.1", **{"ef21-version": -1}
    )
    reply = make_client().handle(msg, context(3))
    assert "grad" in reply.content.array_records
    offset = torch.full((D,), 5.0)
    target = target_of(reply.content, msg.content)
    assert target is not None and target.codec is None and not target.compressed
    torch.testing.assert_close(target.vector, flatten(reply.content["grad"]))  # type: ignore[arg-type]
    surface = node_surface(msg, target, offset)
    assert surface.aggregated(3, target.vector, compressed=target.compressed) is target.vector
    assert surface.to_wire(3, target.vector, compressed=target.compressed) is target.vector


def test_node_surface_adds_the_copy_to_a_compressed_reply() -> None:
    cfg = {"ef21-version": 0, "compressor-seed": 0}
    msg = train_message(point(1), node=3, op="momentum", beta=0.5, compressor="none", **cfg)
    ctx = context(3)
    client = make_client()
    first = train_message(point(1), node=3, op="momentum", beta=0.5, **{"ef21-version": -1})
    client.handle(first, ctx)  # the dense reset: g = v
    reply = client.handle(msg, ctx)
    c = compressed("none", dict(reply.content.array_records))
    offset = torch.linspace(-1, 1, D)
    target = target_of(reply.content, msg.content)
    assert target is not None and target.codec is not None and target.compressed
    torch.testing.assert_close(target.vector, c)
    surface = node_surface(msg, target, offset)
    aggregated = surface.aggregated(3, target.vector, compressed=True)
    torch.testing.assert_close(aggregated, offset + c)
    torch.testing.assert_close(surface.to_wire(3, aggregated, compressed=True), c)
    # a copy of the wrong size is an error (the mod's reply becomes an error reply), not
    # silently left out
    with pytest.raises(RuntimeError):
        node_surface(msg, target, torch.ones(D + 1)).aggregated(3, target.vector, compressed=True)


# --- byzantine_mod: the node keeps its g equal to the server's copy ---------------------------


def state_g(ctx: Context, strat: ByzEF21SGDM) -> torch.Tensor:
    g = load_vector(ctx, {"state-key": strat.state_key}, "ef21-g")
    assert g is not None
    return g


def test_mod_sign_flip_from_round_2_keeps_the_node_in_sync() -> None:
    """The Byzantine nodes answer honestly in round 1 (the dense reset), then sign-flip: the
    mod forges ``g_prev + c`` into ``-(g_prev + c)``, sends ``C(forged - g_prev)`` and stores
    the server's view, so every stored g equals the server's copy after every round."""
    spec = "topk:0.1"
    nodes = Nodes(wrap=byzantine_mod)
    strat = strategy(spec)
    grid = nodes.grid

    def switch_on(server_round: int) -> None:
        if server_round == 2:
            for b in BYZ:
                nodes.contexts[b].node_config["byzantine-attack"] = "sign-flip"

    rounds = run(strat, grid, nodes, 4, before_round=switch_on)
    for i, r in enumerate(rounds):
        assert r.metrics["accepted"] == 6 and r.metrics["rejected"] == 0
        for n in NODES:
            torch.testing.assert_close(r.stored[n], r.after[n])
        if i == 0:
            continue
        for b in BYZ:
            g_old, c = r.before[b], compressed(spec, r.raw[b])
            want = expected_sign_flip_copy(spec, g_old, c, r.seeds[b])
            torch.testing.assert_close(r.after[b], want)
            assert (r.after[b] - (g_old + c)).abs().max() > 1e-3  # really attacked


def test_mod_sign_flip_keeps_the_node_in_sync_from_the_dense_reset() -> None:
    nodes = Nodes(
        node_config=lambda n: {"byzantine-attack": "sign-flip"} if n in BYZ else {},
        wrap=byzantine_mod,
    )
    strat = strategy("topk:0.1")
    rounds = run(strat, nodes.grid, nodes, 3)
    for b in BYZ:  # the reset was attacked: the server holds -v, the node's g is v
        torch.testing.assert_close(rounds[0].after[b], -dense(rounds[0].raw[b]))
    for r in rounds:
        for b in BYZ:
            torch.testing.assert_close(r.stored[b], r.after[b])


def test_byzantine_app_keeps_the_node_in_sync_with_the_server() -> None:
    client = make_client()
    app = byzantine_app(client.app, attack="sign-flip", partitions=[1, 4])
    grid = LocalGrid(NODES, app)  # partition i: NODES[i], so BYZ are partitions 1 and 4
    strat = strategy("none")
    arrays: ArrayRecord | None = ArrayRecord(point(1))
    for server_round in (1, 2):
        assert arrays is not None
        msgs = strat.configure_train(server_round, arrays, ConfigRecord({}), grid)
        arrays, _ = strat.aggregate_train(server_round, list(grid.send_and_receive(msgs)))
        for b in BYZ:
            torch.testing.assert_close(state_g(grid.contexts[b], strat), strat.copies[b])
