"""GradientClient: every op against a direct torch autograd computation on the same minibatch.

The model (``gradient_helpers.make_net``) has a BatchNorm layer: its running statistics are
floating-point state-dict entries without a gradient (zero in the reply) and its int64
``num_batches_tracked`` is left out of the reply.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from flwr_byz.clients import GradientClient, byzantine_mod
from flwr_byz.compressors import get_compressor
from flwr_byz.protocol.records import record_payload

from .gradient_helpers import (
    LOCAL_SIZE,
    batch_indices,
    context,
    flat,
    make_client,
    node_data,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    point,
    record_tensors,
    reference_grad,
    train_message,
)

NODE = 5
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


def assert_grads(record: ArrayRecord, expected: dict[str, torch.Tensor]) -> None:
    got = record_tensors(record)
    assert list(got) == list(expected)
    for key, want in expected.items():
        assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
        torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-6, msg=key)


# --- op "grad" -----------------------------------------------------------------------------


def test_grad_full_batch_equals_autograd() -> None:
    state = point()
    reply = make_client().handle(train_message(state, op="grad", **{"batch-size": 0}), context())
    x, y = node_data(NODE)
    want, loss = reference_grad(state, x, y)
    assert list(want) == FLOAT_KEYS  # num_batches_tracked (int64) is not part of the gradient
    assert_grads(reply.content["grad"], want)
    assert not torch.any(want["0.weight"] == 0)  # a real gradient, not zeros
    assert not reply.content["grad"]["1.running_mean"].numpy().any()  # buffers: zero
    assert reply.content["metrics"]["train-loss"] == pytest.approx(loss, rel=1e-6)
    assert reply.content["metrics"]["num-examples"] == LOCAL_SIZE


@pytest.mark.parametrize(("size", "seed"), [(7, 123), (4, 9), (12, 0)])
def test_grad_minibatch_is_the_seeded_permutation(size: int, seed: int) -> None:
    state = point(1)
    msg = train_message(state, op="grad", **{"batch-size": size, "batch-seed": seed})
    reply = make_client().handle(msg, context())
    x, y = node_data(NODE)
    idx = torch.randperm(LOCAL_SIZE, generator=torch.Generator().manual_seed(seed))[:size]
    want, loss = reference_grad(state, x[idx], y[idx])
    assert_grads(reply.content["grad"], want)
    assert reply.content["metrics"]["train-loss"] == pytest.approx(loss, rel=1e-6)
    assert reply.content["metrics"]["num-examples"] == LOCAL_SIZE  # the local size, not b
    full, _ = reference_grad(state, x, y)
    assert not torch.allclose(flat(full), flat(want), atol=1e-4)  # the batch matters
    jdx = batch_indices(LOCAL_SIZE, size, seed + 1)
    other, _ = reference_grad(state, x[jdx], y[jdx])
    assert not torch.allclose(flat(other), flat(want), atol=1e-4)


def test_grad_batch_of_one_with_batchnorm_raises() -> None:
    """The model's own error (BatchNorm on one sample) reaches the caller (an error reply)."""
    msg = train_message(point(), op="grad", **{"batch-size": 1, "batch-seed": 0})
    with pytest.raises(ValueError, match="more than 1 value"):
        make_client().handle(msg, context())


@pytest.mark.parametrize("size", [LOCAL_SIZE, LOCAL_SIZE + 5, 0])
def test_grad_batch_size_at_least_n_is_the_full_data(size: int) -> None:
    state = point(2)
    msg = train_message(state, op="grad", **{"batch-size": size, "batch-seed": 77})
    reply = make_client().handle(msg, context())
    x, y = node_data(NODE)
    assert_grads(reply.content["grad"], reference_grad(state, x, y)[0])


def test_grad_uses_the_nodes_own_data() -> None:
    state = point()
    client = make_client()
    a = client.handle(train_message(state, op="grad", node=5), context(5))
    b = client.handle(train_message(state, op="grad", node=6), context(6))
    assert_grads(b.content["grad"], reference_grad(state, *node_data(6))[0])
    assert not np.allclose(
        a.content["grad"]["0.weight"].numpy(), b.content["grad"]["0.weight"].numpy()
    )


def test_grad_float64_model_keeps_float64() -> None:
    state = point(3, torch.float64)
    reply = make_client(torch.float64).handle(train_message(state, op="grad"), context())
    x, y = node_data(NODE, torch.float64)
    want, _ = reference_grad(state, x, y)
    got = record_tensors(reply.content["grad"])
    assert all(v.dtype == torch.float64 for v in got.values())
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=1e-14)


def test_reply_answers_the_message() -> None:
    msg = train_message(point(), op="grad")
    reply = make_client().handle(msg, context())
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert reply.metadata.dst_node_id == msg.metadata.src_node_id
    assert not reply.has_error()
    assert set(reply.content.keys()) == {"grad", "metrics"}
    assert isinstance(reply.content["metrics"]["num-examples"], int)


# --- op "grad_diff" ------------------------------------------------------------------------


def grad_diff_reference(
    x_state: dict[str, torch.Tensor], prev_state: dict[str, torch.Tensor], size: int, seed: int
) -> tuple[torch.Tensor, float]:
    """grad(x) - grad(prev) on ONE minibatch, flat, and the loss at x."""
    x, y = node_data(NODE)
    idx = batch_indices(LOCAL_SIZE, size, seed)
    gx, loss = reference_grad(x_state, x[idx], y[idx])
    gp, _ = reference_grad(prev_state, x[idx], y[idx])
    return flat(gx) - flat(gp), loss


def test_grad_diff_identity_is_the_difference_on_the_same_minibatch() -> None:
    xk1, xk = point(10), point(11)
    cfg = {"op": "grad_diff", "compressor": "none", "batch-size": 6, "batch-seed": 31}
    reply = make_client().handle(train_message(xk1, xk, **cfg), context())
    payload = record_payload(reply.content["payload"])
    assert set(payload) == {"values"}
    want, loss = grad_diff_reference(xk1, xk, 6, 31)
    torch.testing.assert_close(payload["values"], want, rtol=1e-5, atol=1e-6)
    assert reply.content["metrics"]["train-loss"] == pytest.approx(loss, rel=1e-6)
    assert reply.content["metrics"]["num-examples"] == LOCAL_SIZE
    # the SAME minibatch: two different minibatches would give another vector
    x, y = node_data(NODE)
    i, j = batch_indices(LOCAL_SIZE, 6, 31), batch_indices(LOCAL_SIZE, 6, 32)
    mixed = flat(reference_grad(xk1, x[i], y[i])[0]) - flat(reference_grad(xk, x[j], y[j])[0])
    assert not torch.allclose(mixed, want, atol=1e-4)


def test_grad_diff_without_a_compressor_is_dense() -> None:
    xk1, xk = point(12), point(13)
    reply = make_client().handle(train_message(xk1, xk, op="grad_diff"), context())
    want, _ = grad_diff_reference(xk1, xk, 0, 0)
    torch.testing.assert_close(
        record_payload(reply.content["payload"])["values"], want, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("seed", [0, 4242])
def test_grad_diff_randk_is_randk_of_the_brute_force_difference(seed: int) -> None:
    xk1, xk = point(20), point(21)
    cfg = {
        "op": "grad_diff",
        "compressor": "randk:0.25",
        "compressor-seed": seed,
        "batch-size": 8,
        "batch-seed": 5,
    }
    reply = make_client().handle(train_message(xk1, xk, **cfg), context())
    delta, _ = grad_diff_reference(xk1, xk, 8, 5)
    d = delta.numel()
    payload = record_payload(reply.content["payload"])
    assert payload["seed"].tolist() == [seed]
    got = get_compressor("randk:0.25").decompress(payload, d)
    # RandK by hand: K = round(d / 4) coordinates of randperm(d) from the seed, scaled by d/K
    k = round(0.25 * d)
    support = torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:k]
    want = torch.zeros(d)
    want[support] = delta[support] * (d / k)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert int((got != 0).sum()) <= k and payload["values"].numel() == k


def test_grad_diff_needs_prev() -> None:
    msg = train_message(point(), op="grad_diff", compressor="none")
    with pytest.raises(ValueError, match="prev"):
        make_client().handle(msg, context())


# --- op "momentum" -------------------------------------------------------------------------


def momentum_message(state: dict[str, torch.Tensor], seed: int, key: str, beta: float = 0.7):
    cfg = {"op": "momentum", "beta": beta, "batch-size": 6, "batch-seed": seed, "state-key": key}
    return train_message(state, **cfg)


def minibatch_grad(state: dict[str, torch.Tensor], seed: int, size: int = 6) -> torch.Tensor:
    x, y = node_data(NODE)
    idx = batch_indices(LOCAL_SIZE, size, seed)
    return flat(reference_grad(state, x[idx], y[idx])[0])


def state_keys(ctx) -> list[str]:
    return list(ctx.state.keys())


def test_momentum_follows_the_recursion_over_three_calls() -> None:
    client, ctx, beta = make_client(), context(), 0.7
    points = [point(30), point(31), point(32)]
    seeds = [101, 102, 103]
    m = None
    for state, seed in zip(points, seeds, strict=True):
        reply = client.handle(momentum_message(state, seed, "run-a", beta), ctx)
        g = minibatch_grad(state, seed)
        m = g.clone() if m is None else beta * m + (1 - beta) * g
        got = flat(record_tensors(reply.content["grad"]))
        torch.testing.assert_close(got, m, rtol=1e-5, atol=1e-6)
        assert list(reply.content["grad"].keys()) == FLOAT_KEYS
    keys = state_keys(ctx)
    assert len(keys) == 1 and "run-a" in keys[0]
    # not the plain last gradient: the history counts
    assert not torch.allclose(m, minibatch_grad(points[-1], seeds[-1]), atol=1e-4)


def test_momentum_state_is_per_context() -> None:
    client = make_client()
    ctx_a, ctx_b = context(), context()
    client.handle(momentum_message(point(30), 1, "k"), ctx_a)
    reply = client.handle(momentum_message(point(31), 2, "k"), ctx_b)
    torch.testing.assert_close(  # a fresh Context starts from m = g
        flat(record_tensors(reply.content["grad"])), minibatch_grad(point(31), 2)
    )


def test_a_new_state_key_restarts_momentum_and_drops_the_old_state() -> None:
    client, ctx = make_client(), context()
    ctx.state["user-record"] = ConfigRecord({"mine": 1})  # not ours: must survive
    client.handle(momentum_message(point(40), 1, "old-run"), ctx)
    client.handle(momentum_message(point(41), 2, "old-run"), ctx)
    assert any("old-run" in k for k in state_keys(ctx))
    reply = client.handle(momentum_message(point(42), 3, "new-run"), ctx)
    torch.testing.assert_close(
        flat(record_tensors(reply.content["grad"])),
        minibatch_grad(point(42), 3),  # m = g: the old run's momentum is not used
        rtol=1e-5,
        atol=1e-6,
    )
    keys = state_keys(ctx)
    assert not any("old-run" in k for k in keys)
    assert any("new-run" in k for k in keys)
    assert "user-record" in keys


def test_momentum_beta_zero_is_the_gradient() -> None:
    client, ctx = make_client(), context()
    client.handle(momentum_message(point(50), 1, "z", beta=0.0), ctx)
    reply = client.handle(momentum_message(point(51), 2, "z", beta=0.0), ctx)
    torch.testing.assert_close(
        flat(record_tensors(reply.content["grad"])), minibatch_grad(point(51), 2)
    )


# --- label flip ----------------------------------------------------------------------------


def flipped_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    x, y = node_data(NODE)
    return reference_grad(state, x, 2 - y)[0]


def test_label_flip_from_the_message_config() -> None:
    state = point(60)
    msg = train_message(state, op="grad", **{"byzantine-attack": "label-flip"})
    reply = make_client(num_classes=3).handle(msg, context())
    want = flipped_reference(state)
    assert_grads(reply.content["grad"], want)
    honest, _ = reference_grad(state, *node_data(NODE))
    assert not torch.allclose(flat(honest), flat(want), atol=1e-4)


def test_label_flip_from_the_node_config() -> None:
    state = point(61)
    reply = make_client(num_classes=3).handle(
        train_message(state, op="grad"), context(**{"byzantine-attack": "label-flip"})
    )
    assert_grads(reply.content["grad"], flipped_reference(state))


def test_label_flip_with_another_num_classes() -> None:
    """num_classes=4 on 3-class data: y' = 3 - y (label 3 does not exist for the model, so
    the cross-entropy fails: the flip really used C=4)."""
    msg = train_message(point(), op="grad", **{"byzantine-attack": "label-flip"})
    with pytest.raises(IndexError):
        make_client(num_classes=4).handle(msg, context())


def test_no_label_flip_for_other_attacks() -> None:
    state = point(62)
    msg = train_message(state, op="grad", **{"byzantine-attack": "sign-flip"})
    reply = make_client(num_classes=3).handle(msg, context())
    assert_grads(reply.content["grad"], reference_grad(state, *node_data(NODE))[0])


def test_label_flip_infers_num_classes_from_a_batchnorm_model() -> None:
    state = point(63)
    msg = train_message(state, op="grad", **{"byzantine-attack": "label-flip"})
    reply = make_client().handle(msg, context())  # num_classes=None: from the model's output
    assert_grads(reply.content["grad"], flipped_reference(state))


def test_label_flip_infers_num_classes_without_batchnorm() -> None:
    """Without BatchNorm the inference works: C = the model's output width (3)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 3))
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    client = GradientClient(
        model_fn=lambda config: nn.Sequential(nn.Linear(5, 3)),
        loss_fn=lambda model, x, y: torch.nn.functional.cross_entropy(model(x), y),
        data_fn=lambda ctx, config: node_data(int(ctx.node_id)),
    )
    msg = train_message(state, op="grad", **{"byzantine-attack": "label-flip"})
    reply = client.handle(msg, context())
    x, y = node_data(NODE)
    net.load_state_dict(state)
    loss = torch.nn.functional.cross_entropy(net(x), 2 - y)
    gw, gb = torch.autograd.grad(loss, [net[0].weight, net[0].bias])
    got = record_tensors(reply.content["grad"])
    torch.testing.assert_close(got["0.weight"], gw)
    torch.testing.assert_close(got["0.bias"], gb)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["sgd", "", None, "GRAD"])
def test_unknown_op_raises(op: str | None) -> None:
    cfg = {} if op is None else {"op": op}
    with pytest.raises(ValueError, match="unknown op"):
        make_client().handle(train_message(point(), **cfg), context())


def test_no_config_record_raises() -> None:
    msg = Message(RecordDict({"arrays": ArrayRecord(point())}), dst_node_id=5, message_type="train")
    with pytest.raises(ValueError, match="unknown op"):
        make_client().handle(msg, context())


def test_missing_arrays_raises() -> None:
    msg = Message(
        RecordDict({"config": ConfigRecord({"op": "grad"})}), dst_node_id=5, message_type="train"
    )
    with pytest.raises(ValueError, match="arrays"):
        make_client().handle(msg, context())


def test_node_without_data_raises() -> None:
    client = GradientClient(
        model_fn=lambda config: nn.Linear(5, 3),
        loss_fn=lambda model, x, y: model(x).sum(),
        data_fn=lambda ctx, config: (torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)),
    )
    state = {k: v.detach() for k, v in nn.Linear(5, 3).state_dict().items()}
    with pytest.raises(ValueError, match="no local data"):
        client.handle(train_message(state, op="grad"), context())


# --- the ClientApp -------------------------------------------------------------------------


def test_app_is_a_client_app_routing_train_to_handle() -> None:
    client = make_client()
    assert isinstance(client.app, ClientApp)
    state = point(70)
    reply = client.app(train_message(state, op="grad"), context())
    assert_grads(reply.content["grad"], reference_grad(state, *node_data(NODE))[0])
    evaluate = Message(RecordDict({"arrays": ArrayRecord(state)}), 5, "evaluate")
    with pytest.raises(ValueError, match="No evaluate function"):
        client.app(evaluate, context())


def test_app_runs_its_mods() -> None:
    """``mods=[byzantine_mod]``: a node configured with sign-flip replies minus its gradient
    (an op reply: the attack acts on the vector itself); an honest node is untouched."""
    client = make_client(mods=[byzantine_mod])
    state = point(71)
    want = reference_grad(state, *node_data(NODE))[0]
    honest = client.app(train_message(state, op="grad"), context())
    assert_grads(honest.content["grad"], want)
    byz = client.app(train_message(state, op="grad"), context(**{"byzantine-attack": "sign-flip"}))
    assert_grads(byz.content["grad"], {k: -v for k, v in want.items()})
    assert byz.content["metrics"]["num-examples"] == LOCAL_SIZE


def test_app_with_a_mod_observes_the_call() -> None:
    seen: list[str] = []

    def spy(msg, ctx, call_next):
        seen.append(str(msg.content["config"]["op"]))
        return call_next(msg, ctx)

    reply = make_client(mods=[spy]).app(train_message(point(), op="grad"), context())
    assert seen == ["grad"] and "grad" in reply.content


# --- shared / tied parameters --------------------------------------------------------------


class Tied(nn.Module):
    """An encoder and a decoder sharing one weight (state dict: both keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3, 3, bias=False)
        self.dec = nn.Linear(3, 3, bias=False)
        self.dec.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.tanh(self.enc(x)))


def test_tied_weights_get_the_shared_gradient_under_both_keys() -> None:
    torch.manual_seed(0)
    net = Tied()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert set(state) == {"enc.weight", "dec.weight"}
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(2))
    client = GradientClient(
        model_fn=lambda config: Tied(),
        loss_fn=lambda model, xb, yb: torch.nn.functional.cross_entropy(model(xb), yb),
        data_fn=lambda ctx, config: (x, y),
    )
    reply = client.handle(train_message(state, op="grad"), context())
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(net(x), y), [net.enc.weight])
    got = record_tensors(reply.content["grad"])
    torch.testing.assert_close(got["enc.weight"], g)
    torch.testing.assert_close(got["dec.weight"], g)
