"""mu2-SGD (Dahan & Levy 2024, "Fault Tolerant ML: Efficient Meta-Aggregation and Synchronous
Training", arXiv 2405.14759): double momentum, i.e. STORM-style corrected momentum on
the clients (Cutkosky & Orabona 2019) and AnyTime averaging on the server, with a robust
aggregator (CTMA in the paper).

Per round t = 1, 2, ... (alpha_t = t, beta_t = 1/t, gamma_t = alpha_t / alpha_{1:t} = 2/(t+1))::

    server:   sends the query point x_t (the AnyTime average of the w's; x_1 = w_1 = x^0)
    client i: one fresh minibatch z:
              d_i = grad f(x_t; z) + (1 - beta_t)(d_i - grad f(x_prev; z))   (d_i = grad at first)
    server:   d_hat = Agg(d_1..d_m);  w_{t+1} = w_t - eta d_hat     (eta alpha_t with alpha_lr)
              x_{t+1} = (1 - gamma_{t+1}) x_t + gamma_{t+1} w_{t+1}

So x_t = sum_{s<=t} alpha_s w_s / alpha_{1:t} at every t. The reference code
(dahan198/synchronous-fault-tolerant-ml, read, not copied) differs in two details: it floors
beta_t and gamma_t at 0.01 (``floor=0.01`` here) and, counting its steps from 1 after the
first update, gives w_1 weight 0 (gamma = 1 at its first step); this module follows the paper's
weights. A client that misses rounds corrects from its own previous point, so the recursion
stays consistent under partial participation.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .common import Aggregate
from .defaults import RunDefaults
from .sampling import RoundPlan
from .sampling import plan_round as _plan_round
from .surface import IdentitySurface

__all__ = [
    "DEFAULTS",
    "Mu2ClientState",
    "Mu2State",
    "anytime_weight",
    "attack_surface",
    "begin_round",
    "client_step",
    "corrected_beta",
    "plan_round",
    "server_step",
    "shift_back_target",
]

#: Run defaults of mu2sgd (``flwr_byz.methods.defaults``; chosen by
#: ``flwr-byz defaults-sweep``, docs/DEFAULTS.md).
DEFAULTS: dict[str, RunDefaults] = {
    "mu2sgd": RunDefaults(aggregator="ctma+median", lr=2.0, rounds=40)
}


def anytime_weight(t: int, floor: float = 0.0) -> float:
    """gamma_t = alpha_t / alpha_{1:t} = 2 / (t + 1) for alpha_t = t (at least ``floor``)."""
    return max(2.0 / (t + 1), floor)


def corrected_beta(t: int, floor: float = 0.0) -> float:
    """beta_t = 1 / t (at least ``floor``), the clients' correction weight at step t."""
    return max(1.0 / t, floor)


@dataclass(frozen=True)
class Mu2State:
    """Server: the query point x_t, the start x^0, the SGD sequence w_t and the step t (rounds
    sent)."""

    x: torch.Tensor
    x0: torch.Tensor
    w: torch.Tensor
    t: int = 0

    @classmethod
    def start(cls, x0: torch.Tensor) -> Mu2State:
        """x_1 = w_1 = x^0, before step 1."""
        return cls(x0.clone(), x0.clone(), x0.clone(), 0)


def begin_round(state: Mu2State) -> Mu2State:
    """Step t + 1 starts (the server sends x_t with beta_t)."""
    return replace(state, t=state.t + 1)


def plan_round(rng: random.Random, nodes: Sequence[int], k: int | None) -> RoundPlan:
    """The sample, then one minibatch seed per sampled node."""
    return _plan_round(rng, nodes, k)


@dataclass(frozen=True)
class Mu2ClientState:
    """Clients' estimates ``d`` ``[n, d]`` and the points ``x_prev`` ``[n, d]`` they were
    computed at (``started``: row i has both)."""

    d: torch.Tensor
    x_prev: torch.Tensor
    started: torch.Tensor

    @classmethod
    def zeros(cls, n: int, d: int, dtype: torch.dtype = torch.float32) -> Mu2ClientState:
        """No client has stepped yet."""
        z = torch.zeros(n, d, dtype=dtype)
        return cls(z, z.clone(), torch.zeros(n, dtype=torch.bool))


def client_step(
    grads: torch.Tensor,
    grads_prev: torch.Tensor | None,
    x: torch.Tensor,
    state: Mu2ClientState,
    *,
    beta: float,
) -> tuple[torch.Tensor, Mu2ClientState]:
    """``d_i = grad f(x_t; z_i) + (1 - beta)(d_i - grad f(x_prev_i; z_i))`` on rows that have
    started, ``d_i = grad f(x_t; z_i)`` on the others. ``grads``: at the query point ``x``
    (``[n, d]``, or ``[d]`` shared by all rows); ``grads_prev``: at each row's ``x_prev`` on
    the SAME minibatch (None when no row has started). Returns the replies ``d`` and the new
    state (``x_prev = x``)."""
    d = grads
    if grads_prev is not None and bool(state.started.any()):
        corrected = grads + (1.0 - beta) * (state.d - grads_prev)
        d = torch.where(state.started[:, None], corrected, grads)
    here = x.expand_as(grads) if x.dim() == 1 else x
    return d, Mu2ClientState(d, here.clone(), torch.ones_like(state.started))


def server_step(
    state: Mu2State,
    replies: torch.Tensor,
    aggregate: Aggregate,
    *,
    lr: float,
    alpha_lr: bool = False,
    floor: float = 0.0,
) -> tuple[Mu2State, dict[str, Any]]:
    """``d_hat = Agg(replies)``, ``w_{t+1} = w_t - eta d_hat`` (``eta t`` with ``alpha_lr``),
    ``x_{t+1} = (1 - gamma_{t+1}) x_t + gamma_{t+1} w_{t+1}``. On no aggregate the state is
    kept. Stats: ``beta`` (beta_t), ``gamma`` (gamma_{t+1}), ``skipped``."""
    gamma = anytime_weight(state.t + 1, floor)
    d_hat = aggregate(replies)
    stats: dict[str, Any] = {
        "beta": corrected_beta(state.t, floor),
        "gamma": gamma,
        "skipped": int(d_hat is None),
    }
    if d_hat is None:
        return state, stats
    step = lr * (state.t if alpha_lr else 1.0)
    w = state.w - step * d_hat.to(state.w.dtype)
    x = (1.0 - gamma) * state.x + gamma * w
    return replace(state, x=x, w=w), stats


def shift_back_target(
    state: Mu2State, lr: float, mult: float | None, *, alpha_lr: bool = False, floor: float = 0.0
) -> torch.Tensor:
    """ShiftBack's d_hat: the one whose step lands the query point x_{t+1} on
    ``x_t - mult (x_t - x^0)`` (``mult=None``: exactly x^0), through w and the average."""
    m = 1.0 if mult is None else float(mult)
    target = state.x - m * (state.x - state.x0)
    gamma = anytime_weight(state.t + 1, floor)
    w_target = (target - (1.0 - gamma) * state.x) / gamma
    step = lr * (state.t if alpha_lr else 1.0)
    return (state.w - w_target) / step


def attack_surface(
    state: Callable[[], Mu2State], lr: float, *, alpha_lr: bool = False, floor: float = 0.0
) -> IdentitySurface:
    """The estimates d_i are aggregated as they arrive; ShiftBack: :func:`shift_back_target`."""
    return IdentitySurface(
        lambda mult: shift_back_target(state(), lr, mult, alpha_lr=alpha_lr, floor=floor)
    )
