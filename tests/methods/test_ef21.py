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
    NO_ROUND,
    BRCSGDState,
    EF21ClientState,
    EF21State,
    attack_surface,
    brcsgd_client_step,
    brcsgd_server_step,
    client_step,
    handshake,
    refuse_resets,
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


# --- dense resets: the rate limit and the norm bound -------------------------------------------


def _state_with_resets(rounds: dict[int, int], d: int = 4) -> EF21State:
    """A state whose node n got a dense reset ``n * ones`` in round ``rounds[n]``."""
    x = torch.zeros(d, dtype=torch.float64)
    state = EF21State(x, x.clone())
    for node, rnd in sorted(rounds.items(), key=lambda kv: kv[1]):
        vec = torch.full((1, d), float(node), dtype=torch.float64)
        state, _ = server_step(
            state, [node], vec, torch.tensor([True]), guarded(Mean()), lr=0.1, server_round=rnd
        )
    return state


def test_server_step_records_the_round_of_each_reset() -> None:
    state = _state_with_resets({3: 1, 1: 2})
    assert state.node_ids == (1, 3) and state.last_reset is not None
    assert state.last_reset.tolist() == [2, 1]
    grown = state.with_nodes([2, 5])  # new slots have none; the old ones keep theirs
    assert grown.node_ids == (1, 2, 3, 5) and grown.last_reset is not None
    assert grown.last_reset.tolist() == [2, NO_ROUND, 1, NO_ROUND]
    # a compressed reply, or a reset without a round, records nothing
    c = torch.ones(2, 4, dtype=torch.float64)
    kept, _ = server_step(grown, [1, 5], c, torch.tensor([False, True]), guarded(Mean()), lr=0.1)
    assert kept.last_reset is not None and kept.last_reset.tolist() == grown.last_reset.tolist()


@pytest.mark.parametrize("interval", [0, 1, 3, 10])
def test_refuse_resets_rate_limit(interval: int) -> None:
    state = _state_with_resets({1: 1, 2: 4})  # node 3 never reset (first contact)
    nodes = [1, 2, 3]
    resets = torch.ones(3, 4, dtype=torch.float64)
    for rnd in range(5, 16):
        too_soon, too_large = refuse_resets(
            state, nodes, resets, server_round=rnd, interval=interval, norm_bound=0
        )
        want = [interval > 0 and rnd - last < interval for last in (1, 4)] + [False]
        assert too_soon.tolist() == want, rnd
        assert not bool(too_large.any())


def test_refuse_resets_norm_bound_against_the_median_of_the_copies() -> None:
    gen = torch.Generator().manual_seed(0)
    state = _state_with_resets({1: 1, 2: 1, 3: 1, 4: 1, 5: 1})  # copies n * ones, norm 2n
    resets = torch.randn(3, 4, generator=gen, dtype=torch.float64) * torch.tensor(
        [[1.0], [30.0], [0.1]], dtype=torch.float64
    )
    nodes = [2, 6, 7]  # node 2 replaces its copy; 6 and 7 are new
    for bound in (0.5, 1.0, 3.0, 10.0):
        too_soon, too_large = refuse_resets(
            state, nodes, resets, server_round=20, interval=10, norm_bound=bound
        )
        pool = [2.0 * n for n in (1, 3, 4, 5)] + [float(r.norm()) for r in resets]
        median = sorted(pool)[(len(pool) - 1) // 2]  # the lower median, as torch.median
        want = [float(r.norm()) > bound * median for r in resets]
        assert too_large.tolist() == want and not bool(too_soon.any()), bound
    # off: bound 0 or inf; a too-soon reset is never also too large (and not in the pool)
    for off in (0.0, float("inf")):
        _, too_large = refuse_resets(state, nodes, resets * 1e6, server_round=20, norm_bound=off)
        assert not bool(too_large.any())
    too_soon, too_large = refuse_resets(
        state, [1, 6], torch.full((2, 4), 1e6, dtype=torch.float64), server_round=5
    )
    assert too_soon.tolist() == [True, False] and too_large.tolist() == [False, True]


def test_refuse_resets_first_round_and_degenerate_cases() -> None:
    x = torch.zeros(3)
    empty = EF21State(x, x.clone())
    none_soon, none_large = refuse_resets(empty, [], torch.zeros(0, 3), server_round=1)
    assert none_soon.shape == none_large.shape == (0,)
    # round 1: the resets themselves are the reference (a median of 1, 1, 1, 1000)
    resets = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1000.0, 0, 0]])
    too_soon, too_large = refuse_resets(empty, [1, 2, 3, 4], resets, server_round=1)
    assert too_large.tolist() == [False, False, False, True] and not bool(too_soon.any())
    # a zero median bounds nothing
    zeros = torch.zeros(3, 3)
    zeros[0, 0] = 5.0
    _, too_large = refuse_resets(empty, [1, 2, 3], zeros, server_round=1)
    assert not bool(too_large.any())
    # huge float32 values (the norm overflows to inf) are refused
    big = torch.ones(3, 3)
    big[2] = 3e38
    _, too_large = refuse_resets(empty, [1, 2, 3], big, server_round=1)
    assert too_large.tolist() == [False, False, True]
