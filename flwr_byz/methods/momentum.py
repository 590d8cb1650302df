"""Worker momentum + robust aggregation (Karimireddy, He & Jaggi 2021, "Learning from History
for Byzantine Robust Optimization", Alg. 2), with the clipping heuristic of Malinovsky et al.
2024 (Byz-VR-MARINA-PP paper, Eq. (10)) for partial participation.

Per round k::

    client i in S_k:  m_i = beta m_i + (1 - beta) grad f_i(x^k; minibatch)    (m_i = grad first)
    server:           g^k = ARAgg({m_i})                                         (clip_alpha=None)
                      g^k = g^{k-1} + ARAgg({clip_{lambda_k}(m_i - g^{k-1})}),
                            lambda_k = alpha ||x^k - x^{k-1}||                   (Eq. (10))
                      x^{k+1} = x^k - gamma g^k

The first round has no g^{k-1} and is not clipped. A client's momentum moves only in the rounds
it is sampled.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .common import Aggregate, clip_rows, momentum_rows, sgd_step, shift_back_gradient
from .defaults import RunDefaults
from .sampling import RoundPlan
from .sampling import plan_round as _plan_round
from .surface import IdentitySurface

__all__ = [
    "DEFAULTS",
    "MomentumClientState",
    "MomentumState",
    "attack_surface",
    "client_step",
    "plan_round",
    "server_step",
]

#: Run defaults of robust-momentum (``flwr_byz.methods.defaults``; chosen by
#: ``flwr-byz defaults-sweep``, docs/DEFAULTS.md).
DEFAULTS: dict[str, RunDefaults] = {
    "robust-momentum": RunDefaults(aggregator="nnm+cwtm", lr=1.0, momentum=0.5, rounds=40)
}


def plan_round(rng: random.Random, nodes: Sequence[int], k: int | None) -> RoundPlan:
    """The sample, then one minibatch seed per sampled node."""
    return _plan_round(rng, nodes, k)


@dataclass(frozen=True)
class MomentumClientState:
    """Clients' momenta ``m`` ``[n, d]``; ``started[i]``: row i has taken a step."""

    m: torch.Tensor
    started: torch.Tensor

    @classmethod
    def zeros(cls, n: int, d: int, dtype: torch.dtype = torch.float32) -> MomentumClientState:
        """No client has stepped yet."""
        return cls(torch.zeros(n, d, dtype=dtype), torch.zeros(n, dtype=torch.bool))


def client_step(
    grads: torch.Tensor, state: MomentumClientState, *, beta: float
) -> tuple[torch.Tensor, MomentumClientState]:
    """``m_i = beta m_i + (1 - beta) grad_i`` (``grad_i`` itself on a client's first step);
    returns the replies ``m`` ``[n, d]`` and the new state."""
    m = momentum_rows(state.m, grads, state.started, beta)
    return m, MomentumClientState(m, torch.ones_like(state.started))


@dataclass(frozen=True)
class MomentumState:
    """Server: the model x^k, the start x^0, the last aggregate g^{k-1} (None before the first
    step) and ``last_step = ||x^k - x^{k-1}||``."""

    x: torch.Tensor
    x0: torch.Tensor
    g: torch.Tensor | None = None
    last_step: float = 0.0


def server_step(
    state: MomentumState,
    replies: torch.Tensor,
    aggregate: Aggregate,
    *,
    lr: float,
    clip_alpha: float | None = None,
) -> tuple[MomentumState, dict[str, Any]]:
    """Aggregate the momenta ``replies`` ``[m, d]`` (around g^{k-1}, clipped, with
    ``clip_alpha``: Eq. (10)) and step. On no aggregate the state is kept. Stats:
    ``clip_level`` (None: off), ``clipped``, ``skipped``."""
    level, clipped = None, 0
    if clip_alpha is not None and state.g is not None:
        level = clip_alpha * state.last_step
        deltas, clipped = clip_rows(replies - state.g.to(replies.dtype), level)
        agg = aggregate(deltas)
        g = None if agg is None else state.g + agg.to(state.g.dtype)
    else:
        agg = aggregate(replies)
        g = None if agg is None else agg.to(state.x.dtype)
    stats: dict[str, Any] = {"clip_level": level, "clipped": clipped, "skipped": int(g is None)}
    if g is None:
        return state, stats
    x = sgd_step(state.x, g, lr)
    return replace(state, x=x, g=g, last_step=float(torch.linalg.vector_norm(x - state.x))), stats


def attack_surface(state: Callable[[], MomentumState], lr: float) -> IdentitySurface:
    """The momenta are aggregated as they arrive; ShiftBack's vector is the gradient
    ``(mult/lr)(x^k - x^0)`` (``state()``: the current server state)."""
    return IdentitySurface(lambda mult: shift_back_gradient(state().x, state().x0, lr, mult))
