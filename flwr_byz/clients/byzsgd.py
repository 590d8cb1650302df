"""The ByzSGD worker step (op ``byzsgd`` of ``GradientClient``; El-Mhamdi et al. PODC 2020,
ALGORITHMS.md 4.4): choose a model among the servers' models, return the gradient there.

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
``context.state``. A ``filter`` step without the previous step's state is refused (an error
reply); the server then sends the median set, so the worker recovers on its next step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord, Context, RecordDict

from ..aggregators import Median
from ..strategies.byzsgd import MODEL_KEY
from ..strategies.records import Layout, flatten, layout_of, unflatten
from ..strategies.scatter_gather import lipschitz_accepts, lipschitz_coefficient, outlier_bound
from .state import load_count, load_vector, store_count, store_vector

if TYPE_CHECKING:
    from .gradient import GradientClient

__all__ = ["HISTORY", "worker_step"]

HISTORY = 100
"""Past Lipschitz coefficients a worker keeps."""

_median = Median()


def worker_step(
    client: GradientClient,
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
    step = int(config["step"])
    prev_x = load_vector(context, config, "byzsgd-x")
    prev_g = load_vector(context, config, "byzsgd-g")
    history = load_vector(context, config, "byzsgd-k")
    history = torch.zeros(0, dtype=torch.float64) if history is None else history
    continuing = (
        prev_x is not None
        and prev_g is not None
        and load_count(context, config, "byzsgd-step") == step - 1
        and prev_x.shape == models[0][1].shape
    )
    counts = {"byzsgd-dropped": dropped, "byzsgd-rejected": 0, "byzsgd-fallback": 0}
    rule = config.get("byzsgd-rule", "median")
    if rule not in ("median", "filter"):
        raise ValueError(f"ByzSGD worker: unknown byzsgd-rule {rule!r} (median or filter)")
    if rule == "filter":
        if not continuing:
            raise ValueError(
                "ByzSGD worker: a filter step needs this worker's state from step "
                f"{step - 1}; the server sends the median set next time"
            )
        assert prev_x is not None and prev_g is not None
        model, grad, loss, k = _filtered(
            client, config, models, layout, x, y, prev_x, prev_g, history, counts
        )
    else:
        model = _median(torch.stack([v for _, v in models]))
        point = ArrayRecord(dict(models[0][0].items()) | dict(unflatten(model, layout).items()))
        grad, loss = client.gradient(point, layout, x, y, config)
        k = None
        if continuing:
            assert prev_x is not None and prev_g is not None
            k = lipschitz_coefficient(grad, prev_g, model, prev_x)
    if k is not None:
        history = torch.cat([history.to(torch.float64), torch.tensor([k], dtype=torch.float64)])
    store_vector(context, config, "byzsgd-x", model)
    store_vector(context, config, "byzsgd-g", grad)
    store_vector(context, config, "byzsgd-k", history[-HISTORY:])
    store_count(context, config, "byzsgd-step", step)
    return unflatten(grad, layout), loss, counts


def _valid_models(
    arrays: Any, reference: Layout, layout: Layout
) -> tuple[list[tuple[ArrayRecord, torch.Tensor]], int]:
    """The received models that match ``reference`` and are finite (pull order), and the
    number dropped."""
    models: list[tuple[ArrayRecord, torch.Tensor]] = []
    dropped = 0
    j = 0
    while MODEL_KEY.format(j) in arrays:
        record = arrays[MODEL_KEY.format(j)]
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


def _filtered(
    client: GradientClient,
    config: dict[str, Any],
    models: list[tuple[ArrayRecord, torch.Tensor]],
    layout: Layout,
    x: torch.Tensor,
    y: torch.Tensor,
    prev_x: torch.Tensor,
    prev_g: torch.Tensor,
    history: torch.Tensor,
    counts: dict[str, int],
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The synchronous variant's choice: (model, gradient, loss, Lipschitz coefficient)."""
    lr = float(config["lr"])
    period = int(config["gather-period"])
    n_ps, f_ps = int(config["n-servers"]), int(config["f-servers"])
    n_w, f_w = int(config["n-workers"]), int(config["f-workers"])
    since = (int(config["step"]) - 1) % period
    estimate = prev_x - lr * prev_g
    tried = []
    for record, vec in models:
        grad, loss = client.gradient(record, layout, x, y, config)
        k = lipschitz_coefficient(grad, prev_g, vec, prev_x)
        distance = float((vec - estimate).norm())
        bound = outlier_bound(lr, float(grad.norm()), period, n_w, f_w, since)
        tried.append((vec, grad, loss, k, distance, bound))
        if distance <= bound and lipschitz_accepts(k, history, n_ps, f_ps):
            counts["byzsgd-rejected"] = len(tried) - 1
            return vec, grad, loss, k
    counts["byzsgd-rejected"] = len(tried)
    counts["byzsgd-fallback"] = 1
    vec, grad, loss, k, _, _ = min(tried, key=lambda c: (0, c[3]) if c[4] <= c[5] else (1, c[4]))
    return vec, grad, loss, k
