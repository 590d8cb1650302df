"""GradientClient op ``double`` (mu2-SGD's corrected momentum, Dahan & Levy 2024) against
autograd by hand: ``d = grad f(x_t; z) + (1 - beta) (d_prev - grad f(x_prev; z))`` on ONE
minibatch z at the new point and at the client's previous point; the first call is the plain
minibatch gradient. The model (``gradient_helpers.make_net``) has a BatchNorm layer, so the
replies and the stored state cover its floating buffers and skip ``num_batches_tracked``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from flwr.app import Message
from torch import nn

from flwr_byz.clients import GradientClient
from flwr_byz.clients.state import load_vector, state_name

from .gradient_helpers import (
    LOCAL_SIZE,
    batch_indices,
    context,
    flat,
    make_client,
    make_net,
    node_data,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    point,
    record_tensors,
    reference_grad,
    train_message,
)

NODE = 5
BATCH = 6
F64 = torch.float64
FLOAT_KEYS = [
    "0.weight",
    "0.bias",
    "1.weight",
    "1.bias",
    "1.running_mean",
    "1.running_var",
    "3.weight",
    "3.bias",
]


def double_message(
    state: dict[str, torch.Tensor], seed: int, beta: float, key: str = "run", **extra: Any
) -> Message:
    cfg = {"op": "double", "beta": beta, "batch-size": BATCH, "batch-seed": seed, "state-key": key}
    return train_message(state, node=NODE, **(cfg | extra))


def reply_vector(reply: Message) -> torch.Tensor:
    got = record_tensors(reply.content["grad"])
    assert list(got) == FLOAT_KEYS  # the int64 num_batches_tracked is not in the reply
    return flat(got)


def grad_on(state: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """Autograd gradient of the mean loss at ``state`` on the minibatch of ``seed``."""
    x, y = node_data(NODE, F64)
    idx = batch_indices(LOCAL_SIZE, BATCH, seed)
    return flat(reference_grad(state, x[idx], y[idx])[0])


def floating(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return flat({k: v for k, v in state.items() if v.is_floating_point()})


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_first_call_is_the_minibatch_gradient() -> None:
    p1 = point(1, F64)
    reply = make_client(F64).handle(double_message(p1, seed=11, beta=0.3), context(NODE))
    want = grad_on(p1, 11)
    close(reply_vector(reply), want)
    x, y = node_data(NODE, F64)
    assert not torch.allclose(want, flat(reference_grad(p1, x, y)[0]))  # a minibatch, not all
    assert reply.content["metrics"]["num-examples"] == LOCAL_SIZE


@pytest.mark.parametrize(("seed1", "seed2"), [(11, 11), (11, 23)])
@pytest.mark.parametrize("beta", [0.5, 0.2])
def test_second_call_corrects_on_the_new_minibatch_at_the_previous_point(
    seed1: int, seed2: int, beta: float
) -> None:
    client, ctx = make_client(F64), context(NODE)
    p1, p2 = point(1, F64), point(2, F64)
    d1 = reply_vector(client.handle(double_message(p1, seed1, beta=1.0), ctx))
    reply = client.handle(double_message(p2, seed2, beta=beta), ctx)
    want = grad_on(p2, seed2) + (1 - beta) * (d1 - grad_on(p1, seed2))
    close(reply_vector(reply), want)
    if seed1 == seed2:  # d1 = grad(x1; z): the correction vanishes exactly
        close(reply_vector(reply), grad_on(p2, seed2))
        return
    # it can fail: the correction is not zero, uses z2 at x_prev (not z1), weight 1 - beta
    assert not torch.allclose(want, grad_on(p2, seed2), atol=1e-6)
    other = grad_on(p2, seed2) + (1 - beta) * (d1 - grad_on(p1, seed1))
    assert not torch.allclose(want, other, atol=1e-6)
    if beta != 0.5:
        swapped = grad_on(p2, seed2) + beta * (d1 - grad_on(p1, seed2))
        assert not torch.allclose(want, swapped, atol=1e-6)


def test_three_calls_follow_the_recursion_and_the_state_persists() -> None:
    client, ctx = make_client(F64), context(NODE)
    points = [point(s, F64) for s in (1, 2, 3)]
    seeds, betas = [5, 6, 7], [1.0, 0.5, 1 / 3]
    d, prev = None, None
    for state, seed, beta in zip(points, seeds, betas, strict=True):
        reply = client.handle(double_message(state, seed, beta), ctx)
        g = grad_on(state, seed)
        d = g if d is None else g + (1 - beta) * (d - grad_on(prev, seed))
        prev = state
        close(reply_vector(reply), d)
        cfg = {"state-key": "run"}
        close(load_vector(ctx, cfg, "double-d"), d)
        close(load_vector(ctx, cfg, "double-x"), floating(state))
    assert state_name({"state-key": "run"}, "double-d") in ctx.state
    assert state_name({"state-key": "run"}, "double-x") in ctx.state


def test_state_is_per_context() -> None:
    client = make_client(F64)
    a, b = context(NODE), context(NODE)
    client.handle(double_message(point(1, F64), 5, 1.0), a)
    reply = client.handle(double_message(point(2, F64), 6, 0.5), b)
    close(reply_vector(reply), grad_on(point(2, F64), 6))  # b has no previous point


def test_a_new_state_key_starts_fresh_and_drops_the_old_state() -> None:
    client, ctx = make_client(F64), context(NODE)
    client.handle(double_message(point(1, F64), 5, 1.0, key="old"), ctx)
    client.handle(double_message(point(2, F64), 6, 0.5, key="old"), ctx)
    reply = client.handle(double_message(point(3, F64), 7, 0.5, key="new"), ctx)
    close(reply_vector(reply), grad_on(point(3, F64), 7))
    assert not any("old" in name for name in ctx.state)
    assert state_name({"state-key": "new"}, "double-x") in ctx.state


def test_beta_one_is_the_plain_gradient() -> None:
    client, ctx = make_client(F64), context(NODE)
    client.handle(double_message(point(1, F64), 5, 1.0), ctx)
    reply = client.handle(double_message(point(2, F64), 6, 1.0), ctx)
    close(reply_vector(reply), grad_on(point(2, F64), 6))


# --- BatchNorm buffers at the previous point -------------------------------------------------


def eval_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss through the running statistics (eval mode), so the buffers change gradients."""
    model.eval()
    return F.cross_entropy(model(x), y)


def eval_grad(state: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    net = make_net(F64)
    net.load_state_dict(state)
    x, y = node_data(NODE, F64)
    idx = batch_indices(LOCAL_SIZE, BATCH, seed)
    loss = eval_loss(net, x[idx], y[idx])
    grads = dict(
        zip(
            [n for n, _ in net.named_parameters()],
            torch.autograd.grad(loss, list(net.parameters())),
            strict=True,
        )
    )
    return torch.cat(
        [
            grads.get(k, torch.zeros_like(v)).reshape(-1)
            for k, v in net.state_dict().items()
            if v.is_floating_point()
        ]
    )


def test_batchnorm_previous_point_uses_its_own_floating_buffers() -> None:
    client = GradientClient(
        model_fn=lambda config: make_net(F64),
        loss_fn=eval_loss,
        data_fn=lambda ctx, config: node_data(int(ctx.node_id), F64),
    )
    ctx = context(NODE)
    p1, p2 = point(1, F64), point(2, F64)
    p1["1.num_batches_tracked"] = torch.tensor(3)
    p2["1.num_batches_tracked"] = torch.tensor(8)  # differs: not part of the vectors
    beta = 0.25
    d1 = reply_vector(client.handle(double_message(p1, 5, beta=1.0), ctx))
    close(d1, eval_grad(p1, 5))
    reply = client.handle(double_message(p2, 6, beta=beta), ctx)
    want = eval_grad(p2, 6) + (1 - beta) * (d1 - eval_grad(p1, 6))
    close(reply_vector(reply), want)
    # p1's weights with p2's running statistics would give another answer
    mixed = {k: p1[k] for k in p1} | {k: p2[k] for k in ("1.running_mean", "1.running_var")}
    assert not torch.allclose(want, eval_grad(p2, 6) + (1 - beta) * (d1 - eval_grad(mixed, 6)))
    stored = load_vector(ctx, {"state-key": "run"}, "double-x")
    close(stored, floating(p2))  # the buffers are part of the stored point


def test_batchnorm_train_mode_float32_runs() -> None:
    client, ctx = make_client(), context(NODE)
    p1, p2 = point(1), point(2)
    p2["1.num_batches_tracked"] = torch.tensor(4)
    d1 = reply_vector(client.handle(double_message(p1, 5, beta=1.0), ctx))
    reply = client.handle(double_message(p2, 6, beta=0.5), ctx)
    x, y = node_data(NODE)
    idx = batch_indices(LOCAL_SIZE, BATCH, 6)
    g2 = flat(reference_grad(p2, x[idx], y[idx])[0])
    g1 = flat(reference_grad(p1, x[idx], y[idx])[0])
    got = reply_vector(reply)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, g2 + 0.5 * (d1 - g1), rtol=1e-5, atol=1e-6)
