"""``methods.mu2sgd``: the corrected momentum row by row, the AnyTime average (x_t is the
alpha-weighted mean of the w's), and ShiftBack's d_hat."""

from __future__ import annotations

import torch

from flwr_byz.aggregators import Mean
from flwr_byz.methods.common import guarded
from flwr_byz.methods.mu2sgd import (
    Mu2ClientState,
    Mu2State,
    anytime_weight,
    begin_round,
    client_step,
    corrected_beta,
    server_step,
    shift_back_target,
)


def test_weights() -> None:
    assert anytime_weight(1) == 1.0 and anytime_weight(3) == 0.5
    assert corrected_beta(4) == 0.25 and corrected_beta(400, 0.01) == 0.01


def test_client_step_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    grads, prev, d = (torch.randn(3, 5, generator=gen) for _ in range(3))
    x = torch.randn(5, generator=gen)
    started = torch.tensor([True, False, True])
    out, state = client_step(grads, prev, x, Mu2ClientState(d, prev, started), beta=0.25)
    for i in range(3):
        want = grads[i] + (1.0 - 0.25) * (d[i] - prev[i]) if started[i] else grads[i]
        assert torch.equal(out[i], want)
    assert torch.equal(state.d, out) and torch.equal(state.x_prev, x.expand(3, 5))
    first, _ = client_step(grads, None, x, Mu2ClientState.zeros(3, 5), beta=1.0)
    assert torch.equal(first, grads)


def test_server_steps_keep_x_the_anytime_average_of_w() -> None:
    """x_t = sum_s alpha_s w_s / sum_s alpha_s with alpha_s = s (the paper's weights)."""
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, dtype=torch.float64, generator=gen)
    state = Mu2State.start(x0)
    ws = [x0]
    for _ in range(6):
        state = begin_round(state)
        replies = torch.randn(5, 4, dtype=torch.float64, generator=gen)
        state, stats = server_step(state, replies, guarded(Mean()), lr=0.3)
        assert stats["beta"] == corrected_beta(state.t)
        assert stats["gamma"] == anytime_weight(state.t + 1)
        ws.append(state.w)
        weights = torch.arange(1, len(ws) + 1, dtype=torch.float64)
        want = sum(a * w for a, w in zip(weights, ws, strict=True)) / weights.sum()
        torch.testing.assert_close(state.x, want, rtol=1e-12, atol=1e-12)


def test_shift_back_target_lands_the_query_point_on_x0() -> None:
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, dtype=torch.float64, generator=gen)
    state = begin_round(Mu2State.start(x0))
    state, _ = server_step(
        state,
        torch.randn(3, 4, dtype=torch.float64, generator=gen),
        guarded(Mean()),
        lr=0.2,
        alpha_lr=True,
    )
    state = begin_round(state)
    for mult in (None, 0.5):
        d_hat = shift_back_target(state, 0.2, mult, alpha_lr=True)
        after, _ = server_step(state, d_hat[None], guarded(Mean()), lr=0.2, alpha_lr=True)
        m = 1.0 if mult is None else mult
        torch.testing.assert_close(after.x, state.x - m * (state.x - x0), rtol=1e-10, atol=1e-12)
