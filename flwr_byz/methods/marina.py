"""Byz-VR-MARINA-PP (Malinovsky, Richtárik, Horváth & Gorbunov 2024, arXiv 2311.14127,
Algorithm 1): Byzantine-robust variance reduction with client sampling, where the *server* clips
every compressed gradient difference to a level proportional to the last step.

Per round k (Alg. 1)::

    c_k ~ Bernoulli(p);  S_k = C_hat sampled clients if c_k = 1 else C
    x^{k+1} = x^k - gamma g^k;   lambda_{k+1} = alpha ||x^{k+1} - x^k||
    c_k = 1: client i sends grad f_i(x^{k+1})
             g^{k+1} = ARAgg({grad f_i(x^{k+1})})
    c_k = 0: client i sends Q(Delta_i), Delta_i = grad f_i(x^{k+1}; B) - grad f_i(x^k; B)
             on ONE minibatch B at both points
             g^{k+1} = g^k + ARAgg({clip_{lambda_{k+1}}(Q(Delta_i))})  (line 11: the server clips)

Round 1 is always a full round from x^0 (g^0 = 0, so x^1 = x^0). ``alpha=None`` disables the
clipping (the paper's ablation); Byz-VR-MARINA is C = C_hat = n with ``alpha=None``;
Byz-VR-MARINA+ averages the clipped differences with the plain mean. ``full_rounds="epoch"``
is the reference code's variant: a full round (every client, no clipping) every
``ceil(m / b)`` rounds, m the local data size.

Differences from the paper's reference code (SamuelHorvath/VR_Byzantine, partial_participation;
read, not copied): the clipping level follows the paper, ``lambda = alpha ||x^{k+1} - x^k||``,
where the code uses ``clip_mult ||g^k||`` (= ``clip_mult / gamma`` times the paper's level);
and a client computes its step only when sampled (the code computes every client every round).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from .common import Aggregate, clip_rows, sgd_step, shift_back_gradient
from .defaults import RunDefaults
from .sampling import RoundPlan, draw_seeds, sample_nodes
from .surface import IdentitySurface

__all__ = [
    "DEFAULTS",
    "MarinaPlan",
    "MarinaState",
    "attack_surface",
    "client_step",
    "f_full",
    "local_size",
    "p_effective",
    "plan_round",
    "server_step",
    "shift_back_target",
]

#: Run defaults of byz-vr-marina-pp (``flwr_byz.methods.defaults``; chosen by
#: ``flwr-byz defaults-sweep``, docs/DEFAULTS.md).
DEFAULTS: dict[str, RunDefaults] = {
    "byz-vr-marina-pp": RunDefaults(
        aggregator="bucketing:2+median", lr=0.5, compressor="randk:0.1", rounds=40
    )
}

FullRounds = Literal["random", "epoch"]


@dataclass(frozen=True)
class MarinaState:
    """Server: the point x (x^{k+1} once the round is planned), the previous point x_prev
    (x^k), the start x^0, the estimator g (None until a full round succeeds), the clients'
    local data size m (None until reported) and the difference rounds since the last full
    one."""

    x: torch.Tensor
    x0: torch.Tensor
    x_prev: torch.Tensor | None = None
    g: torch.Tensor | None = None
    local_size: float | None = None
    rounds_since_full: int = 0


@dataclass(frozen=True)
class MarinaPlan(RoundPlan):
    """A round's draws plus its kind: ``full`` (c_k = 1) and the clip level lambda_{k+1}
    (None: no clipping, and always in full rounds)."""

    full: bool = True
    level: float | None = None


def p_effective(p: float | None, batch_size: int, local_size: float | None) -> float:
    """p, or ``b / m`` once the clients have reported their data size m (else 1)."""
    if p is not None:
        return p
    if not local_size:
        return 1.0
    return min(1.0, batch_size / local_size)


def plan_round(
    rng: random.Random,
    state: MarinaState,
    nodes: Sequence[int],
    *,
    lr: float,
    p: float | None,
    alpha: float | None,
    batch_size: int,
    clients_per_round: int | None,
    full_round_clients: int | None,
    full_rounds: FullRounds = "random",
) -> tuple[MarinaPlan, MarinaState]:
    """The start of an Alg. 1 round, in the strategy's draw order: the coin c_k
    (``rng.random() < p``; none before the first full round, none for ``"epoch"``), the step
    ``x^{k+1} = x^k - gamma g^k`` and lambda_{k+1}, the sample S_k (C_hat, or every node when
    None or for ``"epoch"``; C in difference rounds), one minibatch seed per sampled node,
    then (difference rounds) one compressor seed per sampled node. Returns the plan and the
    state at x^{k+1}."""
    if state.g is None:
        full = True
    elif full_rounds == "epoch":
        steps = math.ceil((state.local_size or batch_size) / batch_size)
        full = state.rounds_since_full >= steps - 1  # one full + (steps - 1) diff rounds
    else:
        full = rng.random() < p_effective(p, batch_size, state.local_size)
    x_new = state.x if state.g is None else sgd_step(state.x, state.g, lr)
    level = None
    if not full and alpha is not None:
        level = alpha * float(torch.linalg.vector_norm(x_new - state.x))
    k = clients_per_round
    if full:
        k = full_round_clients or len(nodes)
        if full_rounds == "epoch":
            k = len(nodes)
    chosen = sample_nodes(rng, nodes, k)
    batch = draw_seeds(rng, len(chosen))
    comp = None if full else tuple(draw_seeds(rng, len(chosen)))
    plan = MarinaPlan(tuple(chosen), tuple(batch), comp, full=full, level=level)
    return plan, replace(state, x=x_new, x_prev=state.x)


def client_step(
    grads: torch.Tensor,
    grads_prev: torch.Tensor | None,
    *,
    compress: Callable[[torch.Tensor, Sequence[int]], torch.Tensor] | None = None,
    seeds: Sequence[int] = (),
) -> torch.Tensor:
    """The replies ``[n, d]``: full round (``grads_prev`` None) the gradients at x^{k+1};
    difference round ``Q(Delta_i)``, ``Delta_i = grads_i - grads_prev_i`` (the same minibatch
    at x^{k+1} and x^k), compressed row-wise by ``compress(rows, seeds)``
    (e.g. ``functools.partial(compressors.rows.compress_rows, Q)``; None: no compression)."""
    if grads_prev is None:
        return grads
    delta = grads - grads_prev
    return delta if compress is None else compress(delta, seeds)


def f_full(f: int, n: int, clients_per_round: int | None, f_full: int | None = None) -> int:
    """The Byzantine count ARAgg tolerates in a full round of ``n`` clients: ``f_full``, else
    ``ceil(f n / C)`` (at most n - 1)."""
    if f_full is not None:
        return f_full
    return min(math.ceil(f * n / (clients_per_round or n)), max(n - 1, 0))


def local_size(sizes: Sequence[float]) -> float | None:
    """m = the median of the local data sizes the clients report (robust to a few inflated
    reports); None when none is reported."""
    return statistics.median(sizes) if sizes else None


def server_step(
    state: MarinaState,
    plan: MarinaPlan,
    replies: torch.Tensor,
    aggregate: Aggregate,
    *,
    local_sizes: Sequence[float] = (),
) -> tuple[MarinaState, dict[str, Any]]:
    """The end of an Alg. 1 round: full round ``g^{k+1} = ARAgg(replies)`` (and m from
    ``local_sizes``); difference round ``g^{k+1} = g^k + ARAgg(clip(replies))`` with
    ``clip = clip_{lambda_{k+1}}`` (line 11: the server clips). ``aggregate`` is the round's
    rule (full rounds: ARAgg set for :func:`f_full`; Byz-VR-MARINA+: the plain mean on
    differences). On no aggregate g is kept. Stats: ``clipped``, ``skipped``."""
    clipped = 0
    if plan.full:
        m = local_size(local_sizes)
        if m is not None:
            state = replace(state, local_size=m)
        agg = aggregate(replies)
        if agg is not None:
            state = replace(state, g=agg.to(state.x.dtype), rounds_since_full=0)
    else:
        assert state.g is not None, "a difference round needs g from a full round"
        deltas, clipped = clip_rows(replies, plan.level)
        agg = aggregate(deltas)
        g = state.g if agg is None else state.g + agg.to(state.g.dtype)
        state = replace(state, g=g, rounds_since_full=state.rounds_since_full + 1)
    return state, {"clipped": clipped, "skipped": int(agg is None)}


def shift_back_target(
    state: MarinaState, full: bool, lr: float, mult: float | None
) -> torch.Tensor:
    """ShiftBack's reply: in a full round the gradient ``G = (mult/lr)(x^{k+1} - x^0)``, in a
    difference round ``G - g^k`` (so that ``g^{k+1} = G`` if it wins)."""
    target = shift_back_gradient(state.x, state.x0, lr, mult)
    if not full and state.g is not None:
        return target - state.g
    return target


def attack_surface(
    state: Callable[[], MarinaState], full: Callable[[], bool], lr: float
) -> IdentitySurface:
    """The replies (gradients, or decoded differences before the server's clipping) are what
    the attack forges; ShiftBack: :func:`shift_back_target` of the current state and round
    kind (``full()``)."""
    return IdentitySurface(lambda mult: shift_back_target(state(), full(), lr, mult))
