"""Per-client gradients of a whole round at once, with ``torch.func``, for the batched engine.

:class:`FunctionalModel` evaluates the model as a pure function of a flat parameter vector:
``vmap`` over ``grad`` of ``functional_call`` gives every client's minibatch gradient in one
call, at one shared point ``[d]`` or at a point per client ``[n, d]``. Minibatches of unequal
sizes (unequal partitions, the full local data with ``batch-size`` 0) are padded to one width
with a mask; a padded slot repeats a real sample of the same client and is left out of the
mean, so the loss and gradient are those of the client's own batch.

:func:`local_sgd` is ``training.train_epochs`` for every client of a FedAvg round at once: the
same batches (``methods.fedavg.batch_schedule``: the per-epoch ``randperm`` of each client's
seeded generator, the last batch smaller) and ``torch.optim.SGD``'s update row-wise
(``methods.fedavg.client_step``); clients with fewer steps stop early (masked out of the later
steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ...methods import fedavg
from ...protocol.records import Layout

__all__ = ["ClientBatches", "FunctionalModel", "LocalPlan", "local_plan", "local_sgd"]


@dataclass(frozen=True)
class ClientBatches:
    """One minibatch per client: ``index`` ``[n, B]`` rows of the stacked training data,
    ``mask`` ``[n, B]`` which slots are real (a padded slot repeats one of the client's rows)."""

    index: torch.Tensor
    mask: torch.Tensor


class FunctionalModel:
    """``model`` as a function of the flat vector of its floating arrays (``layout`` order, the
    order of ``protocol.records.flatten``): batched losses and gradients, and evaluation."""

    def __init__(self, model: nn.Module, layout: Layout) -> None:
        params = dict(model.named_parameters(remove_duplicate=False))
        missing = [k for k in layout.keys if k not in params]
        if missing:
            raise ValueError(
                "the batched engine trains models whose floating arrays are all parameters; "
                f"{missing[:3]} are buffers (use --engine local)"
            )
        self.model = model
        self.layout = layout
        self.keys = layout.keys
        self.shapes = layout.shapes
        self.sizes = layout.sizes
        self.names = [name for name, _ in model.named_parameters()]  # objective()'s sum order

    @property
    def d(self) -> int:
        """Length of the flat vector."""
        return self.layout.numel

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameter dict of a flat ``[..., d]`` tensor (views)."""
        lead = flat.shape[:-1]
        out = {}
        for key, part, shape in zip(
            self.keys, flat.split(self.sizes, -1), self.shapes, strict=True
        ):
            out[key] = part.reshape(*lead, *shape)
        return out

    def load(self, vector: torch.Tensor) -> nn.Module:
        """The wrapped model with its parameters set to ``vector`` ``[d]`` (for evaluation)."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for key, value in self.split(vector).items():
                params[key].copy_(value)
        return self.model

    def warm_up(self, x: torch.Tensor, y: torch.Tensor, point: torch.Tensor) -> None:
        """One gradient of one sample (``x``, ``y``: one input and label), so that the first
        round's time does not include ``torch.func``'s one-off set-up."""
        mask = torch.ones(1, 1, dtype=torch.bool, device=x.device)
        self.gradients(point, x[:1].unsqueeze(0), y[:1].unsqueeze(0), mask)

    def _loss(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        weight_decay: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean cross-entropy of the real slots of one client's batch, plus
        ``(weight_decay / 2) ||w||^2`` (``training.objective``); (loss, loss detached)."""
        logits = functional_call(self.model, params, (x,))
        ce = F.cross_entropy(logits, y, reduction="none")
        loss = torch.where(mask, ce, 0.0).sum() / mask.sum()
        if weight_decay:
            penalty = sum(params[name].pow(2).sum() for name in self.names)
            loss = loss + 0.5 * weight_decay * penalty
        return loss, loss.detach()

    def gradients(
        self,
        points: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        weight_decay: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every client's gradient of its batch loss: ``points`` ``[d]`` (one point for all) or
        ``[n, d]``; ``x`` ``[n, B, ...]``, ``y`` ``[n, B]``, ``mask`` ``[n, B]``. Returns
        (gradients ``[n, d]`` in ``points``' dtype, losses ``[n]``)."""
        n = x.shape[0]
        if n == 0:
            return points.new_zeros((0, self.d)), points.new_zeros(0)
        groups = _size_groups(mask.sum(dim=1).tolist())
        if len(groups) > 1:  # very unequal batches: a call per group of similar widths
            grads = points.new_empty((n, self.d))
            losses = points.new_empty(n)
            for rows, width in groups:
                idx = torch.tensor(rows, dtype=torch.long, device=x.device)
                at = points if points.dim() == 1 else points[idx]
                g, loss = self._gradients(
                    at, x[idx, :width], y[idx, :width], mask[idx, :width], weight_decay
                )
                grads[idx], losses[idx] = g, loss.to(losses.dtype)
            return grads, losses
        return self._gradients(points, x, y, mask, weight_decay)

    def _gradients(
        self,
        points: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        weight_decay: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        shared = points.dim() == 1
        params = self.split(points)
        step = grad(self._loss, has_aux=True)
        in_dims = (None if shared else 0, 0, 0, 0, None)
        grads, losses = vmap(step, in_dims=in_dims)(params, x, y, mask, weight_decay)
        flat = torch.cat([grads[k].reshape(n, -1) for k in self.keys], dim=1)
        return flat.to(points.dtype), losses


#: A group of rows may do this much padded work relative to its real samples.
PADDING = 1.3


def _size_groups(counts: Sequence[int]) -> list[tuple[list[int], int]]:
    """Rows grouped by batch size, largest first, so that no group pads more than
    :data:`PADDING` times its real samples: ``[(rows, width)]`` (one group when the sizes are
    close)."""
    order = sorted(range(len(counts)), key=lambda i: -counts[i])
    groups: list[tuple[list[int], int]] = []
    rows: list[int] = []
    width, real = 0, 0
    for i in order:
        c = counts[i]
        if rows and width * (len(rows) + 1) > PADDING * (real + c):
            groups.append((rows, max(width, 1)))
            rows, real = [], 0
        if not rows:
            width = c
        rows.append(i)
        real += c
    if rows:
        groups.append((rows, max(width, 1)))
    return groups


@dataclass(frozen=True)
class LocalPlan:
    """The steps of ``train_epochs`` for ``n`` clients: ``index``/``mask`` ``[T, n, B]`` (step t
    of client i; slots past the client's batch masked), ``active`` ``[T, n]`` (client i still
    trains at step t), ``last_epoch`` ``[T, n]`` (the step is in its last epoch; its loss counts
    in the reported mean), ``sizes`` ``[n]``."""

    index: torch.Tensor
    mask: torch.Tensor
    active: torch.Tensor
    last_epoch: torch.Tensor
    sizes: torch.Tensor


def local_plan(
    offsets: Sequence[int],
    sizes: Sequence[int],
    seeds: Sequence[int],
    epochs: int,
    batch_size: int,
) -> LocalPlan:
    """Each client's batches as ``train_epochs`` draws them (``methods.fedavg.batch_schedule``
    of its ``sizes[i]`` samples and ``seeds[i]``), padded into one ``[T, n, B]`` schedule; rows
    are ``offsets[i] + local index``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(sizes)
    schedules = [
        [batch for epoch in fedavg.batch_schedule(m, epochs, batch_size, seed) for batch in epoch]
        for m, seed in zip(sizes, seeds, strict=True)
    ]
    steps = [len(batches) for batches in schedules]
    per_epoch = [math.ceil(m / batch_size) for m in sizes]
    total = max(steps, default=0)
    index = torch.zeros((total, n, batch_size), dtype=torch.long)
    mask = torch.zeros((total, n, batch_size), dtype=torch.bool)
    last = torch.zeros((total, n), dtype=torch.bool)
    for i, batches in enumerate(schedules):
        for t, batch in enumerate(batches):  # a padded slot repeats the client's first row
            index[t, i, : len(batch)] = batch
            mask[t, i, : len(batch)] = True
        last[steps[i] - per_epoch[i] : steps[i], i] = steps[i] > 0
    index += torch.tensor(list(offsets), dtype=torch.long).reshape(1, n, 1)
    active = torch.arange(total).unsqueeze(1) < torch.tensor(steps).unsqueeze(0)
    sizes_t = torch.tensor(list(sizes), dtype=torch.long)
    return LocalPlan(index, mask, active, last, sizes_t)


def local_sgd(
    fm: FunctionalModel,
    start: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: LocalPlan,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``train_epochs`` from ``start`` ``[d]`` for every client of ``plan`` at once (``x``,
    ``y``: the stacked training data): ``torch.optim.SGD``'s step ``g += wd p``, ``b = g``
    (first step) or ``b = mu b + g``, ``p -= lr b``. Returns (the clients' models ``[n, d]``,
    the mean loss of their last epoch ``[n]`` float64, NaN for a client without data)."""
    n = plan.sizes.numel()
    device = start.device
    state = fedavg.LocalSGDState.start(start.unsqueeze(0).expand(n, -1))
    total = torch.zeros(n, dtype=torch.float64, device=device)
    for t in range(plan.index.shape[0]):
        idx, mask = plan.index[t].to(device), plan.mask[t].to(device)
        active = plan.active[t].to(device)
        g = torch.zeros_like(state.params)
        loss = torch.zeros(n, dtype=state.params.dtype, device=device)
        rows = active.nonzero().reshape(-1)  # clients whose schedule has ended are left out
        g[rows], loss[rows] = fm.gradients(
            state.params[rows], x[idx[rows]], y[idx[rows]], mask[rows]
        )
        state = fedavg.client_step(
            state, g, active, lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        counted = plan.last_epoch[t].to(device) & active
        weight = mask.sum(dim=1).to(torch.float64)
        total = total + torch.where(counted, loss.detach().to(torch.float64) * weight, 0.0)
    sizes = plan.sizes.to(device)
    mean = torch.where(sizes > 0, total / sizes.clamp(min=1), math.nan)
    return state.params, mean
