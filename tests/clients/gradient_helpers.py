"""A tiny torch problem for GradientClient and brute-force references computed with autograd.

The model has a BatchNorm layer on purpose: its running statistics are floating-point buffers
(no gradient: zero in the replies) and ``num_batches_tracked`` is an int64 buffer (not in the
replies). ``node_data(node)`` is a node's local data set; ``LocalGrid(nodes, client.handle)``
makes nodes that answer with a GradientClient, one Context per node (so worker momentum
persists across rounds, as on a SuperNode).

Test modules import the autouse fixture ``one_torch_thread``: on 2 busy cores, torch's
intra-op threads make each tiny forward/backward pass 10-20x slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from torch import nn

from flwr_byz.clients import GradientClient
from flwr_byz.simulations.local import ensure_task_identity

ensure_task_identity()


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch single-threaded (restored afterwards): these models are tiny, and intra-op
    threads fighting over 2 busy cores make each backward pass ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run the test with one torch thread (``single_torch_thread``)."""
    with single_torch_thread():
        yield


NUM_CLASSES = 3
FEATURES = 5
LOCAL_SIZE = 20


def make_net(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Linear(5, 8) -> BatchNorm1d(8) -> Tanh -> Linear(8, 3)."""
    net = nn.Sequential(
        nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, NUM_CLASSES)
    )
    return net.to(dtype)


def point(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A model state dict with seeded weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = make_net(dtype)
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def node_data(node: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``LOCAL_SIZE`` samples of node ``node`` (features, labels in [0, NUM_CLASSES))."""
    g = torch.Generator().manual_seed(500 + node)
    x = torch.randn(LOCAL_SIZE, FEATURES, generator=g).to(dtype)
    y = torch.randint(0, NUM_CLASSES, (LOCAL_SIZE,), generator=g)
    return x, y


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def make_client(dtype: torch.dtype = torch.float32, **kwargs: Any) -> GradientClient:
    """A GradientClient on ``make_net`` whose data is ``node_data(context.node_id)``."""
    return GradientClient(
        model_fn=lambda config: make_net(dtype),
        loss_fn=loss_fn,
        data_fn=lambda context, config: node_data(int(context.node_id), dtype),
        **kwargs,
    )


def context(node: int = 5, **node_config: Any) -> Context:
    return Context(
        run_id=1, node_id=node, node_config=node_config, state=RecordDict(), run_config={}
    )


def train_message(
    arrays: dict[str, torch.Tensor],
    prev: dict[str, torch.Tensor] | None = None,
    node: int = 5,
    **config: Any,
) -> Message:
    """A train Message to ``node`` with the point ``arrays`` (and ``prev``) and ``config``."""
    records: dict[str, Any] = {"arrays": ArrayRecord(arrays)}
    if prev is not None:
        records["prev"] = ArrayRecord(prev)
    records["config"] = ConfigRecord(dict(config))
    return Message(content=RecordDict(records), dst_node_id=node, message_type="train")


def batch_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """The documented minibatch: ``randperm(n)[:size]`` from ``seed``; all samples in order
    when ``size`` is 0 or >= n."""
    if size <= 0 or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


def reference_grad(
    state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, torch.Tensor], float]:
    """Autograd gradient of the mean cross-entropy at ``state`` on (x, y), per floating
    state-dict key (zero for buffers), and the loss."""
    net = make_net(next(iter(state.values())).dtype)
    net.load_state_dict(state)
    net.train()
    loss = loss_fn(net, x, y)
    names = [n for n, _ in net.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(loss, list(net.parameters())), strict=True))
    out = {
        k: grads.get(k, torch.zeros_like(v))
        for k, v in net.state_dict().items()
        if v.is_floating_point()
    }
    return out, float(loss.detach())


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """The per-key tensors concatenated in key order."""
    return torch.cat([g.reshape(-1) for g in grads.values()])


def record_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(record[k].numpy().copy()) for k in record}
