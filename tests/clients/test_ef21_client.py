"""GradientClient's EF21 step (op ``momentum`` with ``ef21-version``, Byz-EF21-SGDM) and op
``grad`` with a compressor (BR-CSGD), against hand computations.

The expected values are built from autograd gradients on the documented minibatch
(``reference_grad``), the momentum recursion ``v = beta v + (1 - beta) s`` written out, and
the compressors re-implemented by hand (TopK: the K largest magnitudes; RandK: the first K of
``randperm(d)`` from the seed, scaled by d/K; identity). The version handshake follows
``GradientClient.error_feedback``: equal counts step, a client one ahead rolls back to its
previous g first, anything else resets with g = v sent dense.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message

from flwr_byz.clients.state import load_count, load_vector
from flwr_byz.compressors import get_compressor
from flwr_byz.protocol.records import record_payload

from .gradient_helpers import (
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
BATCH = 8
KEY = "run-ef21"
BETA = 0.7
# Linear(5, 8), BatchNorm1d(8) (2 parameters + 2 float buffers), Linear(8, 3)
D = 5 * 8 + 8 + 4 * 8 + 8 * 3 + 3
ATOL = 1e-6


def ef21_message(
    state: dict[str, torch.Tensor],
    version: int,
    batch_seed: int,
    compressor: str = "topk:0.1",
    compressor_seed: int = 11,
    beta: float = BETA,
    key: str = KEY,
) -> Message:
    cfg: dict[str, Any] = {
        "op": "momentum",
        "beta": beta,
        "batch-size": BATCH,
        "batch-seed": batch_seed,
        "compressor": compressor,
        "compressor-seed": compressor_seed,
        "ef21-version": version,
        "state-key": key,
    }
    return train_message(state, node=NODE, **cfg)


def grad_at(state: dict[str, torch.Tensor], batch_seed: int, size: int = BATCH) -> torch.Tensor:
    """The autograd minibatch gradient at ``state`` (flat, float32)."""
    x, y = node_data(NODE)
    idx = batch_indices(len(y), size, batch_seed)
    grads, _ = reference_grad(state, x[idx], y[idx])
    return flat(grads)


def k_of(spec: str, d: int = D) -> int:
    return min(max(round(float(spec.split(":")[1]) * d), 1), d)


def compress_by_hand(spec: str, x: torch.Tensor, seed: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    if spec == "none":
        return x.clone()
    if spec.startswith("topk"):
        order = sorted(range(len(x)), key=lambda i: -abs(float(x[i])))
        for i in order[: k_of(spec, len(x))]:
            out[i] = x[i]
        return out
    if spec.startswith("randk"):
        d, k = len(x), k_of(spec, len(x))
        idx = torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:k]
        out[idx] = x[idx] * (d / k)
        return out
    raise AssertionError(spec)


def decode_by_hand(reply: Message, d: int = D) -> torch.Tensor:
    """The dense vector of a ``payload`` reply (identity / TopK / RandK), read by hand."""
    record = reply.content["payload"]
    values = torch.from_numpy(record["values"].numpy().copy())
    out = torch.zeros(d, dtype=values.dtype)
    if "indices" in record:
        out[torch.from_numpy(record["indices"].numpy().astype(np.int64))] = values
    elif "seed" in record:
        seed = int(record["seed"].numpy().reshape(-1)[0])
        out[torch.randperm(d, generator=torch.Generator().manual_seed(seed))[: len(values)]] = (
            values
        )
    else:
        out[:] = values
    return out


def dense(reply: Message) -> torch.Tensor:
    return flat(record_tensors(reply.content["grad"]))


def stored(ctx, name: str) -> torch.Tensor | None:
    return load_vector(ctx, {"state-key": KEY}, name)


def count(ctx) -> int | None:
    return load_count(ctx, {"state-key": KEY}, "ef21-count")


def close(a: torch.Tensor | None, b: torch.Tensor) -> None:
    assert a is not None
    torch.testing.assert_close(a.to(b.dtype), b, atol=ATOL, rtol=1e-5)


# --- first contact: the dense reset --------------------------------------------------------


def test_first_call_replies_the_dense_minibatch_gradient() -> None:
    state, ctx = point(0), context(NODE)
    reply = make_client().handle(ef21_message(state, -1, batch_seed=1), ctx)
    s1 = grad_at(state, 1)
    assert set(reply.content.keys()) == {"grad", "metrics"}
    assert list(reply.content["grad"].keys()) == list(reference_grad(state, *node_data(NODE))[0])
    close(dense(reply), s1)
    assert not torch.allclose(s1, grad_at(state, 2), atol=1e-4)  # the batch seed matters
    close(stored(ctx, "ef21-g"), s1)  # g = v = s
    close(stored(ctx, "momentum"), s1)
    assert stored(ctx, "ef21-g-prev") is None
    assert count(ctx) == 0


# --- the EF21 step ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["topk:0.1", "randk:0.1", "none"])
def test_second_call_replies_the_compressed_difference(spec: str) -> None:
    client, ctx = make_client(), context(NODE)
    p1, p2 = point(0), point(1)
    client.handle(ef21_message(p1, -1, batch_seed=1, compressor=spec), ctx)
    reply = client.handle(ef21_message(p2, 0, batch_seed=2, compressor=spec), ctx)
    s1, s2 = grad_at(p1, 1), grad_at(p2, 2)
    v2 = BETA * s1 + (1 - BETA) * s2
    c = compress_by_hand(spec, v2 - s1, 11)
    assert set(reply.content.keys()) == {"payload", "metrics"}
    close(decode_by_hand(reply), c)
    if spec != "none":
        assert reply.content["payload"]["values"].numpy().shape == (k_of(spec),)
    if spec.startswith("topk"):
        assert int((decode_by_hand(reply) != 0).sum()) == k_of(spec)
    if spec.startswith("randk"):
        assert int(reply.content["payload"]["seed"].numpy()[0]) == 11
    # the library's own decoder agrees with the hand decoding
    close(get_compressor(spec).decompress(record_payload(reply.content["payload"]), D), c)
    close(stored(ctx, "momentum"), v2)
    close(stored(ctx, "ef21-g"), s1 + c)
    close(stored(ctx, "ef21-g-prev"), s1)
    assert count(ctx) == 1


def test_three_steps_follow_the_recursion() -> None:
    client, ctx = make_client(), context(NODE)
    points = [point(0), point(1), point(2), point(3)]
    v = g = None
    for t, state in enumerate(points):
        reply = client.handle(ef21_message(state, t - 1, batch_seed=10 + t), ctx)
        s = grad_at(state, 10 + t)
        v = s if v is None else BETA * v + (1 - BETA) * s
        if g is None:
            close(dense(reply), v)
            g = v
        else:
            c = compress_by_hand("topk:0.1", v - g, 11)
            close(decode_by_hand(reply), c)
            g = g + c
        close(stored(ctx, "ef21-g"), g)
        assert count(ctx) == t


# --- the version handshake -------------------------------------------------------------------


@pytest.mark.parametrize("beta", [BETA, 0.0])
def test_client_one_ahead_rolls_back_then_steps(beta: float) -> None:
    """The server never applied the second reply and sends version 0 again."""
    client, ctx = make_client(), context(NODE)
    p1, p2 = point(0), point(1)
    client.handle(ef21_message(p1, -1, 1, beta=beta), ctx)
    first = client.handle(ef21_message(p2, 0, 2, beta=beta), ctx)
    assert count(ctx) == 1
    again = client.handle(ef21_message(p2, 0, 2, beta=beta), ctx)  # same point and batch
    s1, s2 = grad_at(p1, 1), grad_at(p2, 2)
    v2 = beta * s1 + (1 - beta) * s2
    v3 = beta * v2 + (1 - beta) * s2  # the momentum has moved on; g has been rolled back
    c3 = compress_by_hand("topk:0.1", v3 - s1, 11)
    assert set(again.content.keys()) == {"payload", "metrics"}  # not a reset
    close(decode_by_hand(again), c3)
    close(stored(ctx, "ef21-g"), s1 + c3)
    close(stored(ctx, "ef21-g-prev"), s1)
    assert count(ctx) == 1
    if beta == 0.0:  # eta = 1: v3 = v2, so exactly the lost payload again
        for key in ("values", "indices"):
            np.testing.assert_array_equal(
                again.content["payload"][key].numpy(), first.content["payload"][key].numpy()
            )
    else:
        assert not torch.allclose(decode_by_hand(again), decode_by_hand(first), atol=1e-6)
    # and the next round (the server applied the retry: version 1) steps from g = s1 + c3
    p4 = point(2)
    nxt = client.handle(ef21_message(p4, 1, 4, beta=beta), ctx)
    v4 = beta * v3 + (1 - beta) * grad_at(p4, 4)
    c4 = compress_by_hand("topk:0.1", v4 - (s1 + c3), 11)
    close(decode_by_hand(nxt), c4)
    close(stored(ctx, "ef21-g"), s1 + c3 + c4)
    assert count(ctx) == 2


def test_lost_reset_is_followed_by_another_reset() -> None:
    client, ctx = make_client(), context(NODE)
    p1, p2 = point(0), point(1)
    client.handle(ef21_message(p1, -1, 1), ctx)  # never reached the server
    reply = client.handle(ef21_message(p2, -1, 2), ctx)
    v2 = BETA * grad_at(p1, 1) + (1 - BETA) * grad_at(p2, 2)
    assert set(reply.content.keys()) == {"grad", "metrics"}
    close(dense(reply), v2)
    close(stored(ctx, "ef21-g"), v2)
    assert count(ctx) == 0


def test_lost_reset_of_an_existing_copy_is_followed_by_another_reset() -> None:
    client, ctx = make_client(), context(NODE)
    state = point(0)
    client.handle(ef21_message(state, 4, 1), ctx)  # a reset from version 4 (lost state)
    assert count(ctx) == 5 and stored(ctx, "ef21-g-prev") is None
    reply = client.handle(ef21_message(state, 4, 2), ctx)  # the server never got it
    assert set(reply.content.keys()) == {"grad", "metrics"}
    assert count(ctx) == 5


def test_lost_client_state_resets_densely() -> None:
    client = make_client()
    old = context(NODE)
    for t in range(3):
        client.handle(ef21_message(point(t), t - 1, t + 1), old)
    assert count(old) == 2
    fresh = context(NODE)  # the node restarted: empty state; the server is at version 2
    reply = client.handle(ef21_message(point(7), 2, 9), fresh)
    s = grad_at(point(7), 9)
    assert set(reply.content.keys()) == {"grad", "metrics"}
    close(dense(reply), s)  # the momentum restarts too
    close(stored(fresh, "ef21-g"), s)
    close(stored(fresh, "momentum"), s)
    assert count(fresh) == 3


@pytest.mark.parametrize("server", [-1, 3, 7])
def test_mismatched_versions_reset_with_the_momentum_kept(server: int) -> None:
    client, ctx = make_client(), context(NODE)
    p1, p2, p3 = point(0), point(1), point(2)
    client.handle(ef21_message(p1, -1, 1), ctx)
    client.handle(ef21_message(p2, 0, 2), ctx)  # the client is at count 1
    reply = client.handle(ef21_message(p3, server, 3), ctx)
    s1, s2, s3 = grad_at(p1, 1), grad_at(p2, 2), grad_at(p3, 3)
    v3 = BETA * (BETA * s1 + (1 - BETA) * s2) + (1 - BETA) * s3
    assert set(reply.content.keys()) == {"grad", "metrics"}
    close(dense(reply), v3)
    close(stored(ctx, "ef21-g"), v3)
    assert stored(ctx, "ef21-g-prev") is None
    assert count(ctx) == server + 1


def test_a_new_state_key_drops_the_old_ef21_state() -> None:
    client, ctx = make_client(), context(NODE)
    client.handle(ef21_message(point(0), -1, 1, key="old"), ctx)
    client.handle(ef21_message(point(1), 0, 2, key="old"), ctx)
    reply = client.handle(ef21_message(point(2), 1, 3, key=KEY), ctx)  # a new run, same node
    assert set(reply.content.keys()) == {"grad", "metrics"}
    close(dense(reply), grad_at(point(2), 3))
    assert not any(name.startswith("flwr-byz:old:") for name in ctx.state)


# --- op "grad" with a compressor (BR-CSGD) ----------------------------------------------------


@pytest.mark.parametrize("spec", ["topk:0.1", "randk:0.1", "natural", "qsgd:4", "none"])
def test_grad_with_compressor_replies_the_compressed_gradient(spec: str) -> None:
    state, ctx = point(4), context(NODE)
    cfg = {
        "op": "grad",
        "batch-size": BATCH,
        "batch-seed": 5,
        "compressor": spec,
        "compressor-seed": 321,
    }
    reply = make_client().handle(train_message(state, node=NODE, **cfg), ctx)
    assert set(reply.content.keys()) == {"payload", "metrics"}
    s = grad_at(state, 5)
    want = get_compressor(spec).compress(s, 321)
    got = record_payload(reply.content["payload"])
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        torch.testing.assert_close(got[key], want[key], atol=ATOL, rtol=1e-5)
    if spec in ("topk:0.1", "randk:0.1", "none"):
        close(decode_by_hand(reply), compress_by_hand(spec, s, 321))
    assert not ctx.state.array_records  # no state for a plain gradient
