"""``methods.ef21``: Byz-EF21-SGDM's client step (momentum + EF21 error feedback, resets) row by
row against the per-client formula, the server's copies and aggregate, BR-CSGD."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

from flwr_byz.aggregators import Mean, Median
from flwr_byz.compressors import get_compressor
from flwr_byz.compressors.rows import compress_rows
from flwr_byz.methods.common import guarded, momentum_update
from flwr_byz.methods.ef21 import (
    NO_COUNT,
    BRCSGDState,
    EF21ClientState,
    EF21State,
    attack_surface,
    brcsgd_client_step,
    brcsgd_server_step,
    client_step,
    handshake,
    server_step,
)


@pytest.mark.parametrize(
    "reset",
    [[False, True, False, False, True], [False] * 5],  # some resets; none (every row steps)
    ids=["mixed", "no-reset"],
)
@pytest.mark.parametrize("spec", ["topk:0.25", "randk:0.25", "none"])
def test_client_step_rows_equal_the_per_client_formula(spec: str, reset: list[bool]) -> None:
    comp = get_compressor(spec)
    gen = torch.Generator().manual_seed(0)
    n, d, beta = 5, 12, 0.9
    v, g, s = (torch.randn(n, d, generator=gen) for _ in range(3))
    started = torch.tensor([True, True, False, True, False])
    seeds = [3, 1, 4, 1, 5]
    state = EF21ClientState(v, g, started)
    replies, new = client_step(
        s,
        state,
        beta=beta,
        reset=torch.tensor(reset),
        compress=functools.partial(compress_rows, comp),
        seeds=seeds,
    )
    for i in range(n):
        vi = momentum_update(v[i] if started[i] else None, s[i], beta)
        assert torch.equal(new.v[i], vi)
        if reset[i]:  # g = v, sent dense
            assert torch.equal(replies[i], vi) and torch.equal(new.g[i], vi)
        else:
            c = comp.decompress(comp.compress(vi - g[i], seeds[i]), d)
            assert torch.equal(replies[i], c) and torch.equal(new.g[i], g[i] + c)
    assert bool(new.started.all())


def test_client_step_all_resets_never_compresses() -> None:
    def refuse(rows: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        raise AssertionError("no row should be compressed")

    s = torch.randn(3, 4)
    replies, new = client_step(
        s,
        EF21ClientState.zeros(3, 4),
        beta=0.5,
        reset=torch.ones(3, dtype=torch.bool),
        compress=refuse,
        seeds=[0, 0, 0],
    )
    assert torch.equal(replies, s) and torch.equal(new.g, s)


def test_server_copies_and_the_aggregate_in_node_order() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, generator=gen, dtype=torch.float64)
    state = EF21State(x, x.clone())
    dense = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    state, stats = server_step(
        state, [30, 10, 20], dense, torch.ones(3, dtype=torch.bool), guarded(Mean()), lr=0.5
    )
    assert state.node_ids == (10, 20, 30) and stats == {"resets": 3, "copies": 3, "skipped": 0}
    copies = {30: dense[0], 10: dense[1], 20: dense[2]}
    stacked = torch.stack([copies[n] for n in sorted(copies)])
    x1 = x - 0.5 * Mean()(stacked)
    assert torch.equal(state.x, x1)
    # round 2: node 20 compressed, node 5 new (a reset), 10 and 30 stale
    c20, v5 = (
        torch.randn(4, generator=gen, dtype=torch.float64),
        torch.randn(4, dtype=torch.float64),
    )
    state, stats = server_step(
        state,
        [20, 5],
        torch.stack([c20, v5]),
        torch.tensor([False, True]),
        guarded(Median()),
        lr=0.5,
    )
    copies[20] = copies[20] + c20
    copies[5] = v5
    stacked = torch.stack([copies[n] for n in sorted(copies)])
    assert state.node_ids == (5, 10, 20, 30) and stats["copies"] == 4
    assert torch.equal(state.x, x1 - 0.5 * Median()(stacked))
    for n, c in copies.items():
        assert torch.equal(state.copy_of(n), c)
    assert state.copy_of(99) is None
    rows = state.copies_of([20, 99, 5, 10, 1, 30, 20])
    for n, row in zip([20, 99, 5, 10, 1, 30, 20], rows, strict=True):
        want = state.copy_of(n)
        assert torch.equal(row, torch.zeros(4, dtype=x.dtype) if want is None else want)
    assert state.copies_of([]).shape == (0, 4)
    assert torch.equal(EF21State(x, x).copies_of([1, 2]), torch.zeros(2, 4, dtype=x.dtype))
    with pytest.raises(ValueError, match="no copy"):
        server_step(state, [99], c20[None], torch.tensor([False]), guarded(Mean()), lr=0.5)


def test_server_step_without_any_reply_keeps_x() -> None:
    x = torch.ones(3)
    state, stats = server_step(
        EF21State(x, x),
        [],
        torch.zeros(0, 3),
        torch.zeros(0, dtype=torch.bool),
        guarded(Mean()),
        lr=1.0,
    )
    assert torch.equal(state.x, x) and stats["skipped"] == 1 and stats["copies"] == 0


def test_attack_surface_forges_the_copy() -> None:
    x = torch.zeros(2)
    state = EF21State(x, x).with_nodes([4])
    state, _ = server_step(
        state, [4], torch.tensor([[1.0, 2.0]]), torch.tensor([True]), guarded(Mean()), lr=1.0
    )
    s = attack_surface(lambda: state, 1.0)
    c = torch.tensor([0.5, 0.5])
    assert torch.equal(s.aggregated(4, c, compressed=True), torch.tensor([1.5, 2.5]))
    assert torch.equal(s.to_wire(4, s.aggregated(4, c, compressed=True), compressed=True), c)
    assert torch.equal(s.aggregated(7, c, compressed=True), c)  # no copy: aggregated as it is
    # a dense reply is a reset (g_i = reply), also from a node the server holds a copy of
    assert s.aggregated(4, c) is c and s.to_wire(4, c) is c
    assert torch.equal(s.shift_back_target(None), state.x - state.x0)


def test_brcsgd() -> None:
    comp = get_compressor("topk:0.5")
    grads = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    out = brcsgd_client_step(grads, compress=functools.partial(compress_rows, comp), seeds=[0] * 3)
    for i in range(3):
        assert torch.equal(out[i], comp.decompress(comp.compress(grads[i], 0), 6))
    x = torch.ones(6)
    state, stats = brcsgd_server_step(BRCSGDState(x, x), out, guarded(Median()), lr=0.1)
    assert torch.equal(state.x, x - 0.1 * Median()(out)) and stats == {"skipped": 0}
    kept, stats = brcsgd_server_step(BRCSGDState(x, x), out[:0], guarded(Median()), lr=0.1)
    assert torch.equal(kept.x, x) and stats == {"skipped": 1}


def _handshake_reference(server: int, mine: int | None, g_ok: bool, prev_ok: bool):
    """``GradientClient.error_feedback``'s handshake as it was written before
    ``methods.ef21.handshake`` (``g_ok``/``prev_ok``: the vector is stored and of the right
    shape): (restore, reset)."""
    g, restored = g_ok, False
    if mine is not None and mine == server + 1:  # our last reply never reached the server
        g, mine, restored = prev_ok, server, True
    normal = server >= 0 and g and mine == server
    return restored and normal, not normal


def test_handshake_rows_equal_the_scalar_rule() -> None:
    cases = list(
        itertools.product(
            [-3, -2, -1, 0, 1, 2, 5],
            [None, -(2**62), -2, -1, 0, 1, 2, 3, 6],
            [False, True],
            [False, True],
        )
    )
    server = torch.tensor([c[0] for c in cases])
    count = torch.tensor([NO_COUNT if c[1] is None else c[1] for c in cases])
    has_g = torch.tensor([c[2] for c in cases])
    has_prev = torch.tensor([c[3] for c in cases])
    restore, reset = handshake(server, count, has_g, has_prev)
    want = [_handshake_reference(*c) for c in cases]
    assert restore.tolist() == [w[0] for w in want]
    assert reset.tolist() == [w[1] for w in want]
    assert bool(restore.any()) and bool((~reset & ~restore).any()) and bool(reset.any())
