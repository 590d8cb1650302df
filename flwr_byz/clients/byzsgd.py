"""The ByzSGD worker step (op ``byzsgd`` of ``GradientClient``; El-Mhamdi et al. PODC 2020,
arXiv 1905.03853): choose a model among the servers' models, return the gradient there.

The Message carries the models the worker pulled as ``model-0``, ``model-1``, ... (pull order).
Models that do not match the worker's own model (keys, shapes, dtypes) or hold NaN/Inf are
dropped and counted. Then, by ``byzsgd-rule``:

- ``median``: the coordinate-wise median of the models (the paper's main algorithm; also every
  gather step and whenever the worker has no state from the previous step);
- ``filter`` (the synchronous variant): the first model, in pull order, that passes the
  Lipschitz filter (its empirical Lipschitz coefficient is within the (n_ps - f_ps)/n_ps
  quantile of the past ones) and the Outliers filter (it lies within ``outlier_bound`` of the
  worker's own estimate theta_prev - eta g_prev). If none passes (the paper's worker would pull
  yet another server), the one passing the Outliers filter with the smallest coefficient, else
  the closest to the estimate, is used and counted as ``byzsgd-fallback``.

The worker keeps its last model, gradient, step and up to 100 past coefficients in
``context.state`` (saved beside a checkpoint after each step by ``GradientClient``, so that a
resumed run filters on). A ``filter`` step without the previous step's state is refused (an
error reply); the server then sends the median set, so the worker recovers on its next step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from flwr.app import ArrayRecord, Context, RecordDict
from torch import nn

from ..methods import byzsgd
from ..methods.byzsgd import HISTORY, WorkerState
from ..protocol.keys import (
    BYZSGD_DROPPED_KEY,
    BYZSGD_FALLBACK_KEY,
    BYZSGD_FILTER,
    BYZSGD_MEDIAN,
    BYZSGD_REJECTED_KEY,
    BYZSGD_RULE_KEY,
    BYZSGD_RULES,
    F_SERVERS_KEY,
    F_WORKERS_KEY,
    GATHER_PERIOD_KEY,
    LR_KEY,
    N_SERVERS_KEY,
    N_WORKERS_KEY,
    REPLICA_KEY,
    STEP_KEY,
)
from ..protocol.records import Layout, flatten, layout_of, unflatten
from .state import (
    BYZSGD_G,
    BYZSGD_K,
    BYZSGD_STEP,
    BYZSGD_X,
    load_count,
    load_vector,
    store_count,
    store_vector,
)

__all__ = ["HISTORY", "WorkerClient", "worker_step"]


class WorkerClient(Protocol):
    """What the worker step needs of its client (``GradientClient`` is one): a fresh model and
    the gradient at a point."""

    model_fn: Callable[[dict[str, Any]], nn.Module]

    def gradient(
        self,
        point: ArrayRecord,
        layout: Layout,
        x: torch.Tensor,
        y: torch.Tensor,
        config: dict[str, Any],
    ) -> tuple[torch.Tensor, float]:
        """(gradient of the loss at ``point`` on the batch as a flat vector, the loss)."""
        ...


def worker_step(
    client: WorkerClient,
    context: Context,
    config: dict[str, Any],
    content: RecordDict,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[ArrayRecord, float, dict[str, int]]:
    """(gradient record, loss, counters) of one ByzSGD step on the minibatch (x, y)."""
    reference = layout_of(ArrayRecord(client.model_fn(config).state_dict()))
    layout = reference.floating()
    models, dropped = _valid_models(content.array_records, reference, layout)
    if not models:
        raise ValueError(
            f"ByzSGD worker: no usable model among the {dropped} received (shape/dtype/NaN)"
        )
    step = int(config[STEP_KEY])
    history = load_vector(context, config, BYZSGD_K)
    step_before = load_count(context, config, BYZSGD_STEP)
    state = WorkerState(
        x=load_vector(context, config, BYZSGD_X),
        g=load_vector(context, config, BYZSGD_G),
        step=step_before,
        history=torch.zeros(0, dtype=torch.float64) if history is None else history,
    )
    rule = config.get(BYZSGD_RULE_KEY, BYZSGD_MEDIAN)
    if rule not in BYZSGD_RULES:
        raise ValueError(f"ByzSGD worker: unknown byzsgd-rule {rule!r} (median or filter)")

    def gradient(model: torch.Tensor, index: int | None) -> tuple[torch.Tensor, float]:
        if index is not None:  # a pulled model: its own record
            return client.gradient(models[index][0], layout, x, y, config)
        point = ArrayRecord(dict(models[0][0].items()) | dict(unflatten(model, layout).items()))
        return client.gradient(point, layout, x, y, config)

    filtering = rule == BYZSGD_FILTER and state.continues(step, models[0][1].numel())
    grad, loss, state, counts = byzsgd.worker_step(
        [v for _, v in models],
        gradient,
        state,
        rule="filter" if rule == BYZSGD_FILTER else "median",
        step=step,
        **(_filter_config(config) if filtering else _NO_FILTER),
    )
    assert state.x is not None
    store_vector(context, config, BYZSGD_X, state.x)
    store_vector(context, config, BYZSGD_G, grad)
    store_vector(context, config, BYZSGD_K, state.history)
    store_count(context, config, BYZSGD_STEP, step)
    wire_counts = {
        BYZSGD_DROPPED_KEY: dropped,
        BYZSGD_REJECTED_KEY: counts["rejected"],
        BYZSGD_FALLBACK_KEY: counts["fallback"],
    }
    return unflatten(grad, layout), loss, wire_counts


def _valid_models(
    arrays: Any, reference: Layout, layout: Layout
) -> tuple[list[tuple[ArrayRecord, torch.Tensor]], int]:
    """The received models that match ``reference`` and are finite (pull order), and the
    number dropped."""
    models: list[tuple[ArrayRecord, torch.Tensor]] = []
    dropped = 0
    j = 0
    while REPLICA_KEY.format(j) in arrays:
        record = arrays[REPLICA_KEY.format(j)]
        j += 1
        try:
            vec = flatten(record, layout) if layout_of(record) == reference else None
        except ValueError:
            vec = None
        if vec is None or not bool(torch.isfinite(vec).all()):
            dropped += 1
            continue
        models.append((record, vec))
    return models, dropped


_NO_FILTER: dict[str, Any] = {
    "lr": 0.0,
    "period": 1,
    "n_servers": 1,
    "f_servers": 0,
    "n_workers": 1,
    "f_workers": 0,
}
"""Placeholders for a median step (the filters' parameters are not read)."""


def _filter_config(config: dict[str, Any]) -> dict[str, Any]:
    """The filters' parameters from the message (``KeyError`` when one is missing)."""
    return {
        "lr": float(config[LR_KEY]),
        "period": int(config[GATHER_PERIOD_KEY]),
        "n_servers": int(config[N_SERVERS_KEY]),
        "f_servers": int(config[F_SERVERS_KEY]),
        "n_workers": int(config[N_WORKERS_KEY]),
        "f_workers": int(config[F_WORKERS_KEY]),
    }
