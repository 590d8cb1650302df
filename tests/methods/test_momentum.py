"""``methods.momentum``: worker momentum row by row, and RobustMomentum's server step with the
Eq. (10) clipping, against the formulas."""

from __future__ import annotations

import torch

from flwr_byz.aggregators import Mean, Median
from flwr_byz.methods.common import clip_rows, guarded, momentum_update
from flwr_byz.methods.momentum import (
    MomentumClientState,
    MomentumState,
    attack_surface,
    client_step,
    server_step,
)


def test_client_step_rows_equal_momentum_update() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 9, generator=g)
    grads = torch.randn(4, 9, generator=g)
    started = torch.tensor([True, False, True, False])
    out, state = client_step(grads, MomentumClientState(m, started), beta=0.9)
    for i in range(4):
        want = momentum_update(m[i] if started[i] else None, grads[i], 0.9)
        assert torch.equal(out[i], want)
    assert torch.equal(state.m, out) and bool(state.started.all())
    fresh, _ = client_step(grads, MomentumClientState.zeros(4, 9), beta=0.9)
    assert torch.equal(fresh, grads)


def test_server_step_first_round_is_aggregate_and_sgd() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, generator=g, dtype=torch.float64)
    replies = torch.randn(6, 5, generator=g, dtype=torch.float64)
    state, stats = server_step(
        MomentumState(x, x.clone()), replies, guarded(Median()), lr=0.2, clip_alpha=1.0
    )
    agg = Median()(replies)
    assert torch.equal(state.g, agg) and torch.equal(state.x, x - 0.2 * agg)
    assert state.last_step == float(torch.linalg.vector_norm(state.x - x))
    assert stats == {"clip_level": None, "clipped": 0, "skipped": 0}  # no g^{k-1}: no clipping


def test_server_step_eq10_clips_around_the_last_aggregate() -> None:
    g = torch.Generator().manual_seed(2)
    x, g_prev = torch.randn(5, generator=g), torch.randn(5, generator=g)
    replies = 4 * torch.randn(6, 5, generator=g)
    state0 = MomentumState(x, x.clone(), g_prev, last_step=0.3)
    state, stats = server_step(state0, replies, guarded(Mean()), lr=0.1, clip_alpha=2.0)
    clipped, count = clip_rows(replies - g_prev, 0.6)
    g_new = g_prev + Mean()(clipped)
    assert stats["clip_level"] == 2.0 * 0.3 and stats["clipped"] == count > 0
    assert torch.equal(state.g, g_new) and torch.equal(state.x, x - 0.1 * g_new)
    kept, stats = server_step(state0, replies[:0], guarded(Mean()), lr=0.1, clip_alpha=2.0)
    assert kept is state0 and stats["skipped"] == 1


def test_attack_surface_shift_back_is_the_gradient_to_x0() -> None:
    state = MomentumState(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]))
    s = attack_surface(lambda: state, 0.5)
    assert torch.equal(s.shift_back_target(None), (1 / 0.5) * (state.x - state.x0))
    landed = state.x - 0.5 * s.shift_back_target(0.25)
    torch.testing.assert_close(landed, state.x - 0.25 * (state.x - state.x0))
