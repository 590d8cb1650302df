"""Robust FedAvg: local SGD epochs on the clients, a robust aggregate of the model updates on
the server (FedAvg, McMahan et al. 2017, with the weighted mean replaced by a robust rule), and
the partial-participation clipping heuristic of Malinovsky et al. 2024, Eq. (10).

Per round k::

    server:    S_k = a uniform sample of the nodes (Flower's FedAvg sampling)
    client i:  E epochs of minibatch SGD from x^k (momentum mu, weight decay lambda:
               torch.optim.SGD), the batches of each epoch a fresh permutation of its data
               -> x_i^{k+1}
    server:    u_i = x_i^{k+1} - x^k
               u^k = ARAgg({u_i})                                           (clip_alpha=None)
               u^k = u^{k-1} + ARAgg({clip_lambda(u_i - u^{k-1})}),  lambda = alpha ||u^{k-1}||
               x^{k+1} = x^k + u^k

The client step is row-wise over a leading client axis: one SGD step of many clients at once,
with a mask for clients whose (unequal) local schedules have already ended.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .common import Aggregate, clip_rows
from .defaults import RunDefaults
from .surface import OffsetSurface

__all__ = [
    "DEFAULTS",
    "FedAvgState",
    "LocalSGDState",
    "attack_surface",
    "batch_schedule",
    "client_step",
    "plan_round",
    "server_step",
    "shift_back_target",
]

#: Run defaults of the local-SGD methods (``flwr_byz.methods.defaults``; chosen by
#: ``flwr-byz defaults-sweep``, docs/DEFAULTS.md). The flower-* strategies and fltrust (whose
#: server trains on its root data set with these same options) fix their own rule.
DEFAULTS: dict[str, RunDefaults] = {
    "fedavg": RunDefaults(),
    "robust-fedavg": RunDefaults(aggregator="nnm+cwtm"),
    "fltrust": RunDefaults(),
    "flower-krum": RunDefaults(),
    "flower-multikrum": RunDefaults(lr=0.1),
    "flower-bulyan": RunDefaults(),
    "flower-median": RunDefaults(lr=0.1),
    "flower-trimmedavg": RunDefaults(lr=0.1),
}


# --- the round's draws ---------------------------------------------------------------------------
def plan_round(rng: random.Random, nodes: Sequence[int], sample_size: int) -> list[int]:
    """Flower's FedAvg sample: ``rng.sample(nodes, sample_size)`` with ``sample_size =
    max(int(len(nodes) * fraction_train), min_train_nodes)`` (``flwr.serverapp.strategy``'s
    ``sample_nodes`` draws from the global ``random`` module, which the runner seeds each round
    with ``derive_seed(seed, "sample", round)``: pass ``random.Random`` of that seed)."""
    return rng.sample(list(nodes), sample_size)


def batch_schedule(
    num_samples: int, epochs: int, batch_size: int, seed: int
) -> list[list[torch.Tensor]]:
    """The minibatches of a client's local epochs: per epoch, the index tensors of a fresh
    permutation of ``range(num_samples)`` (a CPU ``torch.Generator`` seeded with ``seed``, one
    ``randperm`` per epoch) cut into ``batch_size`` pieces (the last may be smaller). The
    schedule of ``simulations.training.train_epochs``. Empty for no data or no epoch."""
    if num_samples == 0 or epochs == 0:
        return []
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(epochs):
        order = torch.randperm(num_samples, generator=gen)
        out.append([order[s : s + batch_size] for s in range(0, num_samples, batch_size)])
    return out


# --- client: local SGD, row-wise -----------------------------------------------------------------
@dataclass(frozen=True)
class LocalSGDState:
    """The clients' parameters ``[n, p]`` during local training and torch.optim.SGD's momentum
    buffers ``[n, p]`` (``started[i]``: row i has taken a step, so its buffer is set)."""

    params: torch.Tensor
    buffer: torch.Tensor
    started: torch.Tensor

    @classmethod
    def start(cls, params: torch.Tensor) -> LocalSGDState:
        """Fresh optimiser state at ``params`` ``[n, p]`` (a fresh optimiser per round)."""
        n = params.shape[0]
        started = torch.zeros(n, dtype=torch.bool, device=params.device)
        return cls(params.clone(), torch.zeros_like(params), started)


def client_step(
    state: LocalSGDState,
    grads: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> LocalSGDState:
    """One step of ``torch.optim.SGD`` (no dampening, no Nesterov) on every row with ``mask``
    (``[n]`` bool; None: all rows), bit for bit::

        d_i = grad_i + weight_decay p_i
        b_i = d_i (first step) | momentum b_i + d_i;  d_i = b_i        (momentum > 0)
        p_i = p_i - lr d_i

    ``grads`` ``[n, p]`` are the minibatch gradients at ``state.params`` (the caller's
    autograd or ``torch.func``); rows outside ``mask`` are returned unchanged."""
    p = state.params
    d = grads if weight_decay == 0 else grads.add(p, alpha=weight_decay)
    buffer, started = state.buffer, state.started
    if momentum != 0:
        moved = buffer.mul(momentum).add(d)
        buffer = torch.where(started[:, None], moved, d)
        d = buffer
    new = p.add(d, alpha=-lr)
    if mask is None:
        return LocalSGDState(new, buffer, torch.ones_like(started))
    keep = mask[:, None]
    return LocalSGDState(
        torch.where(keep, new, p),
        torch.where(keep, buffer, state.buffer),
        started | mask,
    )


# --- server: robust aggregation of the updates ---------------------------------------------------
@dataclass(frozen=True)
class FedAvgState:
    """The server's model ``x`` ``[d]`` (every array of the model, flat) and the last applied
    update ``u^{k-1}`` (None before the first)."""

    x: torch.Tensor
    last_update: torch.Tensor | None = None


def server_step(
    state: FedAvgState,
    replies: torch.Tensor,
    aggregate: Aggregate,
    *,
    clip_alpha: float | None = None,
    norm_mask: torch.Tensor | None = None,
) -> tuple[FedAvgState, dict[str, Any]]:
    """``x^{k+1} = x^k + u^k`` from the returned models ``replies`` ``[m, d]`` (module doc).

    ``clip_alpha``: Eq. (10) around the last update ``u^{k-1}`` (from the second step on);
    its level ``alpha ||u^{k-1}||`` is measured over ``norm_mask`` (the floating-point
    coordinates; None: all). When ``aggregate`` gives None or the step is not finite the
    model is kept. Stats: ``skipped`` (0/1), ``non_finite`` (1: skipped for a non-finite
    step), ``clip_level`` (None: no clipping), ``clipped``."""
    x = state.x
    updates = replies - x.to(replies.dtype)
    anchor = state.last_update if clip_alpha is not None else None
    level, clipped = None, 0
    if anchor is not None:  # Eq. (10): clip around the last update, add it back
        ref = anchor if norm_mask is None else anchor[norm_mask]
        level = clip_alpha * float(torch.linalg.vector_norm(ref))  # type: ignore[operator]
        updates, clipped = clip_rows(updates - anchor.to(updates.dtype), level)
    step = aggregate(updates)
    if step is not None and anchor is not None:
        step = step + anchor.to(step.dtype)
    non_finite = step is not None and not bool(torch.isfinite(step).all())
    if non_finite:
        step = None
    stats: dict[str, Any] = {
        "skipped": int(step is None),
        "non_finite": int(non_finite),
        "clip_level": level,
        "clipped": clipped,
    }
    if step is None:
        return state, stats
    step = step.to(x.dtype)
    return replace(state, x=x + step, last_update=step), stats


def shift_back_target(x: torch.Tensor, x0: torch.Tensor, mult: float | None) -> torch.Tensor:
    """ShiftBack's update ``-mult (x^k - x^0)`` (``mult=None``: 1, the model goes back to x^0
    exactly), over the floating-point coordinates ``x``, ``x0``."""
    return -(1.0 if mult is None else float(mult)) * (x - x0.to(x.dtype))


def attack_surface(
    model: Callable[[], torch.Tensor], x0: Callable[[], torch.Tensor]
) -> OffsetSurface:
    """The server aggregates updates ``reply - x^k``: a forged update ``u`` goes on the wire as
    the model ``x^k + u``; ShiftBack's update is ``-mult (x^k - x^0)``. ``model()``: the
    floating-point coordinates of the model sent this round; ``x0()``: those of x^0."""
    return OffsetSurface(
        offset=lambda node: model(),
        target=lambda mult: shift_back_target(model(), x0(), mult),
        sign=-1.0,
    )
