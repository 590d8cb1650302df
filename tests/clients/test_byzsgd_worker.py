"""GradientClient op ``byzsgd`` (the ByzSGD worker, El-Mhamdi et al. PODC 2020) against
references written from the algorithm text.

The worker receives the servers' models as ``model-0``, ``model-1``, ... (pull order), drops
the ones that do not match its own model (keys, shapes, dtypes, undecodable bytes) or hold
NaN/Inf, and returns the minibatch gradient at

- ``median``: the coordinate-wise median of the valid models (here: a Python loop over sorted
  coordinates, the mean of the two middle values for an even count);
- ``filter``: the first model passing the Lipschitz filter (k <= the (n_ps - f_ps)/n_ps
  quantile of the history and k, ``np.percentile``) and the Outliers filter (distance to
  theta_prev - lr g_prev at most ``lr ||g|| ((3T + 2)(n_w - f_w) / (4 f_w) + 2 s)``, s =
  (t - 1) mod T); if none, among those passing the Outliers filter the smallest k, else the
  closest to the estimate (``reference_filter``).

Two problems: softmax regression (``nn.Linear(5, 3)``, cross-entropy, gradients by autograd on
the formula in ``method_helpers.model_grad``), and a separable quadratic
``0.5 sum_i A_i (theta_i - C_i)^2`` whose gradient is ``A (theta - C)``: with one stiff
coordinate (A = 1000) that honest steps never move, a candidate nudged along it has a huge
empirical Lipschitz coefficient while staying close to the worker's estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from torch import nn

from flwr_byz.clients import GradientClient
from flwr_byz.clients.byzsgd import HISTORY
from flwr_byz.clients.state import load_count, load_vector, store_count, store_vector

from ..strategies.method_helpers import local_data, minibatch, model_grad, vec
from .gradient_helpers import context, one_torch_thread  # noqa: F401 (autouse fixture)

NODE = 5
SIZE = 24
KEY = "run-byzsgd"
F64 = torch.float64
D = 3 * 5 + 3  # weight [3, 5], bias [3]
# the quorums of every message: n_ps = 5, f_ps = 1 (quantile 0.8), n_w = 7, f_w = 2
QUORUMS = {"n-servers": 5, "f-servers": 1, "n-workers": 7, "f-workers": 2}


# --- the two problems ------------------------------------------------------------------------


def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = local_data(NODE, SIZE)
    return x.to(F64), y


def linear() -> nn.Module:
    return nn.Linear(5, 3).to(F64)


def softmax_client() -> GradientClient:
    return GradientClient(
        model_fn=lambda config: linear(),
        loss_fn=lambda model, x, y: F.cross_entropy(model(x), y),
        data_fn=lambda ctx, config: data(),
    )


def softmax_grad(theta: torch.Tensor, batch_size: int = 0, batch_seed: int = 0) -> torch.Tensor:
    """Brute-force minibatch gradient of the softmax regression at the flat ``theta``."""
    x, y = data()
    idx = minibatch(SIZE, batch_size, batch_seed)
    return model_grad(theta, x[idx], y[idx])


def softmax_loss(theta: torch.Tensor) -> float:
    x, y = data()
    w, b = theta[:15].reshape(3, 5), theta[15:]
    return float(F.cross_entropy(x @ w.T + b, y))


A = torch.cat([torch.tensor([1000.0], dtype=F64), torch.linspace(1.0, 2.0, D - 1, dtype=F64)])
C = torch.linspace(-0.5, 0.5, D, dtype=F64)


def quadratic_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    theta = torch.cat([model.weight.reshape(-1), model.bias])
    return 0.5 * (A * (theta - C) ** 2).sum()


def quadratic_client() -> GradientClient:
    return GradientClient(
        model_fn=lambda config: linear(),
        loss_fn=quadratic_loss,
        data_fn=lambda ctx, config: data(),
    )


def quadratic_grad(theta: torch.Tensor) -> torch.Tensor:
    return A * (theta - C)


# --- messages, replies, state ------------------------------------------------------------


def record(theta: torch.Tensor) -> ArrayRecord:
    """The flat ``[W, b]`` as a state dict of ``nn.Linear(5, 3)`` (float64)."""
    theta = theta.to(F64)
    return ArrayRecord({"weight": theta[:15].reshape(3, 5).clone(), "bias": theta[15:].clone()})


def byzsgd_message(
    models: Sequence[torch.Tensor | ArrayRecord],
    step: int,
    rule: str = "median",
    lr: float = 0.5,
    period: int = 3,
    **extra: Any,
) -> Message:
    records: dict[str, Any] = {
        f"model-{j}": m if isinstance(m, ArrayRecord) else record(m) for j, m in enumerate(models)
    }
    cfg: dict[str, Any] = {
        "op": "byzsgd",
        "byzsgd-rule": rule,
        "step": step,
        "lr": lr,
        "gather-period": period,
        **QUORUMS,
        "batch-size": 0,
        "batch-seed": 0,
        "state-key": KEY,
    }
    records["config"] = ConfigRecord(cfg | extra)
    return Message(content=RecordDict(records), dst_node_id=NODE, message_type="train")


def reply_grad(reply: Message) -> torch.Tensor:
    assert list(reply.content["grad"].keys()) == ["weight", "bias"]
    return vec(reply.content["grad"])


def counters(reply: Message) -> tuple[int, int, int]:
    m = reply.content["metrics"]
    return int(m["byzsgd-dropped"]), int(m["byzsgd-rejected"]), int(m["byzsgd-fallback"])


def stored(ctx: Context, name: str) -> torch.Tensor | None:
    return load_vector(ctx, {"state-key": KEY}, name)


def stored_step(ctx: Context) -> int | None:
    return load_count(ctx, {"state-key": KEY}, "byzsgd-step")


def history(ctx: Context) -> list[float]:
    h = stored(ctx, "byzsgd-k")
    return [] if h is None else [float(v) for v in h]


def close(got: torch.Tensor | None, want: torch.Tensor) -> None:
    assert got is not None
    torch.testing.assert_close(got.to(F64), want.to(F64), rtol=1e-9, atol=1e-12)


def theta(seed: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


def far_direction(seed: int, norm: float) -> torch.Tensor:
    u = torch.randn(D, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return u * (norm / float(u.norm()))


# --- brute-force references ------------------------------------------------------------------


def median_by_hand(models: Sequence[torch.Tensor]) -> torch.Tensor:
    out = []
    for i in range(len(models[0])):
        column = sorted(float(m[i]) for m in models)
        n = len(column)
        out.append(column[n // 2] if n % 2 else (column[n // 2 - 1] + column[n // 2]) / 2)
    return torch.tensor(out, dtype=F64)


def k_by_hand(
    g: torch.Tensor, g_prev: torch.Tensor, x: torch.Tensor, x_prev: torch.Tensor
) -> float:
    move = math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x, x_prev, strict=True)))
    if move == 0.0:
        return 0.0
    diff = math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(g, g_prev, strict=True)))
    return diff / move


def reference_filter(
    candidates: Sequence[torch.Tensor],
    grad_fn: Callable[[torch.Tensor], torch.Tensor],
    prev_x: torch.Tensor,
    prev_g: torch.Tensor,
    past: list[float],
    step: int,
    lr: float,
    period: int,
) -> dict[str, Any]:
    """The synchronous variant's choice, written from the algorithm text: index, rejected,
    fallback, k of the choice, and per candidate whether each filter passed."""
    n_ps, f_ps = QUORUMS["n-servers"], QUORUMS["f-servers"]
    n_w, f_w = QUORUMS["n-workers"], QUORUMS["f-workers"]
    s = (step - 1) % period
    estimate = prev_x - lr * prev_g
    rows = []
    for c in candidates:
        g = grad_fn(c)
        k = k_by_hand(g, prev_g, c, prev_x)
        bound = lr * float(g.norm()) * ((3 * period + 2) * (n_w - f_w) / (4 * f_w) + 2 * s)
        distance = float((c - estimate).norm())
        lip = math.isfinite(k) and (
            not past or k <= float(np.percentile(np.array([*past, k]), 100 * (n_ps - f_ps) / n_ps))
        )
        rows.append({"k": k, "distance": distance, "outliers": distance <= bound, "lipschitz": lip})
    for i, row in enumerate(rows):
        if row["outliers"] and row["lipschitz"]:
            return {"index": i, "rejected": i, "fallback": 0, "k": row["k"], "rows": rows}
    passing = [i for i, row in enumerate(rows) if row["outliers"]]
    if passing:
        i = min(passing, key=lambda j: rows[j]["k"])
    else:
        i = min(range(len(rows)), key=lambda j: rows[j]["distance"])
    return {"index": i, "rejected": len(rows), "fallback": 1, "k": rows[i]["k"], "rows": rows}


def honest_run(
    client: GradientClient,
    ctx: Context,
    grad_fn: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    lr: float,
    first_step: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` median steps from ``first_step`` on one honest model that follows
    theta <- theta - lr g; returns the last (theta, g)."""
    x = start.clone()
    g = grad_fn(x)
    for t in range(first_step, first_step + steps):
        if t > first_step:
            x = x - lr * g
            g = grad_fn(x)
        reply = client.handle(byzsgd_message([x], t, lr=lr), ctx)
        close(reply_grad(reply), g)
    return x, g


# --- median rule -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 4])
@pytest.mark.parametrize("batch", [(0, 0), (8, 17)])
def test_median_rule_is_the_gradient_at_the_coordinate_median(
    count: int, batch: tuple[int, int]
) -> None:
    size, seed = batch
    models = [theta(10 + j, scale=1.0) for j in range(count)]
    ctx = context(NODE)
    reply = softmax_client().handle(
        byzsgd_message(models, 1, **{"batch-size": size, "batch-seed": seed}), ctx
    )
    med = median_by_hand(models)
    for m in models:  # the median is none of the models: the test can tell them apart
        assert float((m - med).norm()) > 0.1
    want = softmax_grad(med, size, seed)
    close(reply_grad(reply), want)
    if size:  # the minibatch matters
        assert float((want - softmax_grad(med)).norm()) > 1e-3
    metrics = reply.content["metrics"]
    assert int(metrics["num-examples"]) == SIZE
    assert counters(reply) == (0, 0, 0)
    if not size:
        assert float(metrics["train-loss"]) == pytest.approx(softmax_loss(med), rel=1e-9)
    close(stored(ctx, "byzsgd-x"), med)
    close(stored(ctx, "byzsgd-g"), want)
    assert stored_step(ctx) == 1
    assert history(ctx) == []  # no state from step 0: no coefficient yet


def test_message_without_arrays_works_and_arrays_are_ignored() -> None:
    models = [theta(1), theta(2), theta(3)]
    msg = byzsgd_message(models, 1)
    assert "arrays" not in msg.content.array_records
    plain = softmax_client().handle(msg, context(NODE))
    close(reply_grad(plain), softmax_grad(median_by_hand(models)))
    msg.content["arrays"] = record(theta(99, scale=5.0))  # not a pulled model
    again = softmax_client().handle(msg, context(NODE))
    close(reply_grad(again), softmax_grad(median_by_hand(models)))


# --- invalid models ---------------------------------------------------------------------------


def invalid_models(base: torch.Tensor) -> list[ArrayRecord]:
    nan = base.clone()
    nan[4] = float("nan")
    inf = base.clone()
    inf[16] = float("-inf")
    w, b = base[:15].reshape(3, 5), base[15:]
    corrupt = record(base)
    corrupt["bias"] = Array(dtype="float64", shape=(3,), stype="numpy.ndarray", data=b"junk")
    return [
        record(nan),
        record(inf),
        ArrayRecord({"weight": w.T.clone(), "bias": b.clone()}),  # same size, wrong shape
        ArrayRecord({"weight": w.clone(), "bias": b.clone(), "extra": b.clone()}),
        ArrayRecord({"weight": w.clone()}),  # bias missing
        ArrayRecord({"weight": w.float(), "bias": b.float()}),  # float32, not float64
        corrupt,  # header fine, bytes undecodable
    ]


def test_invalid_models_are_dropped_and_the_median_is_over_the_valid_ones() -> None:
    valid = [theta(21, 1.0), theta(22, 1.0), theta(23, 1.0)]
    bad = invalid_models(theta(24, 1.0))
    mixed: list[Any] = [bad[0], valid[0], *bad[1:5], valid[1], *bad[5:], valid[2]]
    ctx = context(NODE)
    reply = softmax_client().handle(byzsgd_message(mixed, 1), ctx)
    med = median_by_hand(valid)
    close(reply_grad(reply), softmax_grad(med))
    assert counters(reply) == (len(bad), 0, 0)
    close(stored(ctx, "byzsgd-x"), med)
    # with the bad ones kept (NaN aside), the median would differ: they were really left out
    assert float((median_by_hand([*valid, theta(24, 1.0)]) - med).norm()) > 1e-3


def test_invalid_models_are_dropped_by_the_filter_rule_too() -> None:
    client, ctx, lr = softmax_client(), context(NODE), 0.5
    x, g = honest_run(client, ctx, softmax_grad, theta(0), 2, lr)
    honest = x - lr * g
    reply = client.handle(byzsgd_message([*invalid_models(honest), honest], 3, "filter"), ctx)
    assert counters(reply) == (7, 0, 0)
    close(reply_grad(reply), softmax_grad(honest))


@pytest.mark.parametrize("rule", ["median", "filter"])
def test_no_usable_model_raises(rule: str) -> None:
    client, ctx = softmax_client(), context(NODE)
    client.handle(byzsgd_message([theta(0)], 1), ctx)  # state from step 1 for the filter
    with pytest.raises(ValueError, match="no usable model"):
        client.handle(byzsgd_message(invalid_models(theta(1)), 2, rule), ctx)
    with pytest.raises(ValueError, match="no usable model"):
        client.handle(byzsgd_message([], 2, rule), ctx)
    assert stored_step(ctx) == 1  # nothing stored by the refused steps


# --- filter rule: state from step t - 1 ------------------------------------------------------


def test_filter_needs_the_state_of_the_previous_step() -> None:
    client, ctx = softmax_client(), context(NODE)
    models = [theta(1), theta(2)]
    with pytest.raises(ValueError, match="needs this worker's state"):
        client.handle(byzsgd_message(models, 4, "filter"), ctx)
    assert stored_step(ctx) is None
    client.handle(byzsgd_message(models, 2), ctx)  # median at step 2
    with pytest.raises(ValueError, match="from step 3"):  # step 4 needs step 3's state
        client.handle(byzsgd_message(models, 4, "filter"), ctx)
    with pytest.raises(ValueError, match="needs this worker's state"):  # another run's state
        client.handle(byzsgd_message(models, 3, "filter", **{"state-key": "other"}), ctx)
    client.handle(byzsgd_message(models, 2), ctx)  # the median set again, at step 2
    reply = client.handle(byzsgd_message(models, 3, "filter"), ctx)
    assert stored_step(ctx) == 3
    assert counters(reply)[0] == 0


# --- filter rule: the two filters ------------------------------------------------------------


def test_filter_rejects_a_far_model_by_the_outliers_filter_and_takes_the_honest_one() -> None:
    client, ctx, lr = softmax_client(), context(NODE), 0.5
    x, g = honest_run(client, ctx, softmax_grad, theta(0), 2, lr)
    past = history(ctx)
    assert len(past) == 1
    honest = x - lr * g
    far = honest + far_direction(7, 1e3)
    ref = reference_filter([far, honest], softmax_grad, x, g, past, 3, lr, 3)
    # the scenario: the far model passes the Lipschitz filter and fails the Outliers one
    assert ref["rows"][0] == ref["rows"][0] | {"outliers": False, "lipschitz": True}
    assert ref["rows"][1]["outliers"] and ref["rows"][1]["lipschitz"]
    reply = client.handle(byzsgd_message([far, honest], 3, "filter", lr=lr), ctx)
    want = softmax_grad(honest)
    close(reply_grad(reply), want)
    assert counters(reply) == (0, 1, 0)
    assert float(reply.content["metrics"]["train-loss"]) == pytest.approx(softmax_loss(honest))
    close(stored(ctx, "byzsgd-x"), honest)
    close(stored(ctx, "byzsgd-g"), want)
    assert stored_step(ctx) == 3
    assert history(ctx) == pytest.approx([*past, k_by_hand(want, g, honest, x)], rel=1e-9)
    # in the other order the honest model is the first to pass: nothing rejected
    ctx2 = context(NODE)
    honest_run(client, ctx2, softmax_grad, theta(0), 2, lr)
    reply = client.handle(byzsgd_message([honest, far], 3, "filter", lr=lr), ctx2)
    assert counters(reply) == (0, 0, 0)
    close(reply_grad(reply), want)


@pytest.mark.parametrize(("first_step", "accepted"), [(3, False), (1, True), (2, True)])
def test_outlier_bound_grows_with_the_steps_since_the_gather(
    first_step: int, accepted: bool
) -> None:
    """T = 3: a model at a distance between the bound for s = 0 and for s = 1 from the
    estimate passes the Outliers filter at steps 2 (s = 1) and 3 (s = 2), not at step 4
    (s = 0). The history is empty (one median step before), so the Lipschitz filter accepts."""
    client, ctx, lr = softmax_client(), context(NODE), 0.5
    x, g = honest_run(client, ctx, softmax_grad, theta(0), 1, lr, first_step)
    assert history(ctx) == []
    estimate = x - lr * g
    u = far_direction(3, 1.0)
    spread0 = 11 * 5 / 8
    # r with r = lr ||g(estimate + r u)|| (spread0 + 1), by bisection (the norm is bounded)
    lo, hi = 0.0, 1e3
    for _ in range(60):
        r = (lo + hi) / 2
        g_r = float(softmax_grad(estimate + r * u).norm())
        lo, hi = (r, hi) if r < lr * g_r * (spread0 + 1.0) else (lo, r)
    candidate = estimate + lo * u
    r = lo
    step = first_step + 1
    ref = reference_filter([candidate, estimate], softmax_grad, x, g, [], step, lr, 3)
    assert ref["rows"][0]["lipschitz"] and ref["rows"][0]["outliers"] == accepted
    bound = lambda s: lr * float(softmax_grad(candidate).norm()) * (spread0 + 2 * s)  # noqa: E731
    assert bound(0) < 0.99 * r and r < 0.99 * bound(1)  # clear margins on both sides
    reply = client.handle(byzsgd_message([candidate, estimate], step, "filter", lr=lr), ctx)
    chosen = candidate if accepted else estimate
    close(reply_grad(reply), softmax_grad(chosen))
    assert counters(reply) == (0, 0 if accepted else 1, 0)
    close(stored(ctx, "byzsgd-x"), chosen)
    assert len(history(ctx)) == 1  # the first coefficient of this worker


def nudged(x: torch.Tensor, g: torch.Tensor, lr: float, c: float) -> torch.Tensor:
    """The estimate x - lr g moved by c lr ||g|| along the stiff coordinate (index 0)."""
    out = x - lr * g
    out[0] += c * lr * float(g.norm())
    return out


QLR = 0.01  # lr of the quadratic problem: lr A T-spread < 1 on the soft coordinates


def quadratic_start() -> torch.Tensor:
    start = theta(5, scale=1.0)
    start[0] = C[0]  # the stiff coordinate starts at its optimum: honest steps never move it
    return start


def test_lipschitz_filter_rejects_a_huge_coefficient_once_a_history_exists() -> None:
    client, ctx = quadratic_client(), context(NODE)
    x, g = honest_run(client, ctx, quadratic_grad, quadratic_start(), 3, QLR)
    past = history(ctx)
    assert len(past) == 2 and past[1] < past[0]  # honest coefficients decrease here
    honest = x - QLR * g
    spike = nudged(x, g, QLR, 0.5)
    ref = reference_filter([spike, honest], quadratic_grad, x, g, past, 4, QLR, 3)
    assert ref["rows"][0]["outliers"] and not ref["rows"][0]["lipschitz"]
    assert ref["rows"][0]["k"] > 100 * max(past)
    assert ref["index"] == 1
    reply = client.handle(byzsgd_message([spike, honest], 4, "filter", lr=QLR), ctx)
    close(reply_grad(reply), quadratic_grad(honest))
    assert counters(reply) == (0, 1, 0)
    close(stored(ctx, "byzsgd-x"), honest)
    assert history(ctx) == pytest.approx([*past, ref["k"]], rel=1e-9)


def test_without_history_the_lipschitz_filter_accepts_the_same_spike() -> None:
    client, ctx = quadratic_client(), context(NODE)
    x, g = honest_run(client, ctx, quadratic_grad, quadratic_start(), 1, QLR)
    assert history(ctx) == []
    honest = x - QLR * g
    spike = nudged(x, g, QLR, 0.5)
    reply = client.handle(byzsgd_message([spike, honest], 2, "filter", lr=QLR), ctx)
    close(reply_grad(reply), quadratic_grad(spike))
    assert counters(reply) == (0, 0, 0)
    k = k_by_hand(quadratic_grad(spike), g, spike, x)
    assert k > 100
    assert history(ctx) == pytest.approx([k], rel=1e-9)


def test_fallback_takes_the_smallest_coefficient_among_those_passing_the_outliers_filter() -> None:
    client, ctx = quadratic_client(), context(NODE)
    x, g = honest_run(client, ctx, quadratic_grad, quadratic_start(), 3, QLR)
    past = history(ctx)
    far = x - QLR * g + 1e3 * (A < 10).to(F64)  # moved on the soft coordinates only
    big, smaller = nudged(x, g, QLR, 0.5), nudged(x, g, QLR, 0.2)
    candidates = [far, big, smaller]
    ref = reference_filter(candidates, quadratic_grad, x, g, past, 4, QLR, 3)
    rows = ref["rows"]
    assert not rows[0]["outliers"] and rows[0]["k"] < rows[2]["k"]  # far has the smallest k
    assert rows[1]["outliers"] and rows[2]["outliers"] and rows[2]["k"] < rows[1]["k"]
    assert not any(row["lipschitz"] for row in rows[1:])
    assert rows[1]["distance"] > rows[2]["distance"]
    assert ref["index"] == 2 and ref["fallback"] == 1
    reply = client.handle(byzsgd_message(candidates, 4, "filter", lr=QLR), ctx)
    close(reply_grad(reply), quadratic_grad(smaller))
    assert counters(reply) == (0, 3, 1)
    close(stored(ctx, "byzsgd-x"), smaller)
    close(stored(ctx, "byzsgd-g"), quadratic_grad(smaller))
    assert stored_step(ctx) == 4
    assert history(ctx) == pytest.approx([*past, rows[2]["k"]], rel=1e-9)


def test_fallback_takes_the_closest_to_the_estimate_when_none_passes_the_outliers_filter() -> None:
    client, ctx, lr = softmax_client(), context(NODE), 0.5
    x, g = honest_run(client, ctx, softmax_grad, theta(0), 2, lr)
    estimate = x - lr * g
    farther, closer = estimate + far_direction(1, 1e3), estimate + far_direction(2, 500.0)
    ref = reference_filter([farther, closer], softmax_grad, x, g, history(ctx), 3, lr, 3)
    assert not any(row["outliers"] for row in ref["rows"])
    assert ref["index"] == 1
    reply = client.handle(byzsgd_message([farther, closer], 3, "filter", lr=lr), ctx)
    close(reply_grad(reply), softmax_grad(closer))
    assert counters(reply) == (0, 2, 1)
    close(stored(ctx, "byzsgd-x"), closer)


def test_outliers_filter_is_off_without_byzantine_workers() -> None:
    """f_w = 0: the bound is infinite; a far model with a small coefficient is accepted."""
    client, ctx, lr = softmax_client(), context(NODE), 0.5
    x, g = honest_run(client, ctx, softmax_grad, theta(0), 2, lr)
    far = x - lr * g + far_direction(7, 1e3)
    msg = byzsgd_message([far], 3, "filter", lr=lr, **{"f-workers": 0})
    reply = client.handle(msg, ctx)
    assert counters(reply) == (0, 0, 0)
    close(reply_grad(reply), softmax_grad(far))


@pytest.mark.parametrize("seed", range(4))
def test_filter_matches_the_reference_on_random_candidates(seed: int) -> None:
    """Random mixes of honest, nudged and far candidates on the quadratic problem."""
    client, ctx = quadratic_client(), context(NODE)
    x, g = honest_run(client, ctx, quadratic_grad, quadratic_start(), 2 + seed, QLR)
    gen = torch.Generator().manual_seed(seed)
    estimate = x - QLR * g
    pool = [
        estimate,
        nudged(x, g, QLR, 0.3),
        nudged(x, g, QLR, -0.05),
        estimate + far_direction(seed, 50.0),
        estimate + 1e-3 * torch.randn(D, generator=gen, dtype=F64),
    ]
    order = torch.randperm(len(pool), generator=gen).tolist()[: 2 + seed % 3]
    candidates = [pool[i] for i in order]
    step = 3 + seed
    ref = reference_filter(candidates, quadratic_grad, x, g, history(ctx), step, QLR, 3)
    reply = client.handle(byzsgd_message(candidates, step, "filter", lr=QLR), ctx)
    close(reply_grad(reply), quadratic_grad(candidates[ref["index"]]))
    assert counters(reply) == (0, ref["rejected"], ref["fallback"])


# --- state ------------------------------------------------------------------------------------


def test_state_follows_every_step_and_the_history_is_capped() -> None:
    """Median steps on three moving models: after step t the worker keeps the median, its
    gradient and t; from step 2 on each step appends ||g_t - g_{t-1}|| / ||x_t - x_{t-1}||,
    the last ``HISTORY`` of them."""
    client, ctx = softmax_client(), context(NODE)
    assert HISTORY == 100
    base = [theta(31, 1.0), theta(32, 1.0), theta(33, 1.0)]
    drift = [far_direction(40 + j, 0.05) for j in range(3)]
    ks: list[float] = []
    prev: tuple[torch.Tensor, torch.Tensor] | None = None
    for t in range(1, HISTORY + 4):
        models = [
            b + math.sin(0.3 * t + j) * d for j, (b, d) in enumerate(zip(base, drift, strict=True))
        ]
        reply = client.handle(byzsgd_message(models, t), ctx)
        med = median_by_hand(models)
        want = softmax_grad(med)
        close(reply_grad(reply), want)
        close(stored(ctx, "byzsgd-x"), med)
        close(stored(ctx, "byzsgd-g"), want)
        assert stored_step(ctx) == t
        if prev is not None:
            ks.append(k_by_hand(want, prev[1], med, prev[0]))
        assert len(history(ctx)) == min(t - 1, HISTORY)
        if t in (2, 50, HISTORY + 1, HISTORY + 3):
            assert history(ctx) == pytest.approx(ks[-HISTORY:], rel=1e-9)
        prev = (med, want)
    assert len(ks) == HISTORY + 2


def test_a_median_step_after_a_gap_keeps_the_history_and_adds_nothing() -> None:
    client, ctx = softmax_client(), context(NODE)
    honest_run(client, ctx, softmax_grad, theta(0), 3, 0.5)
    past = history(ctx)
    assert len(past) == 2
    jump = theta(8, 1.0)
    client.handle(byzsgd_message([jump], 7), ctx)  # the worker missed steps 4 to 6
    assert history(ctx) == pytest.approx(past, rel=1e-12)
    close(stored(ctx, "byzsgd-x"), jump)
    close(stored(ctx, "byzsgd-g"), softmax_grad(jump))
    assert stored_step(ctx) == 7
    client.handle(byzsgd_message([theta(9, 1.0)], 8), ctx)
    assert len(history(ctx)) == 3


def test_a_full_history_drops_its_oldest_coefficient() -> None:
    client, ctx = softmax_client(), context(NODE)
    cfg = {"state-key": KEY}
    x = theta(0)
    g = softmax_grad(x)
    full = torch.arange(1, HISTORY + 1, dtype=F64) / 10.0
    store_vector(ctx, cfg, "byzsgd-x", x)
    store_vector(ctx, cfg, "byzsgd-g", g)
    store_vector(ctx, cfg, "byzsgd-k", full)
    store_count(ctx, cfg, "byzsgd-step", 41)
    honest = x - 0.5 * g
    reply = client.handle(byzsgd_message([honest], 42, "filter"), ctx)
    k = k_by_hand(softmax_grad(honest), g, honest, x)
    ref = reference_filter([honest], softmax_grad, x, g, full.tolist(), 42, 0.5, 3)
    assert ref["index"] == 0 and ref["fallback"] == 0
    assert counters(reply) == (0, 0, 0)
    assert history(ctx) == pytest.approx([*full[1:].tolist(), k], rel=1e-12)


def test_unknown_rule_is_refused() -> None:
    """A rule the worker does not know is an error reply, not a silent median step."""
    ctx = context(NODE)
    with pytest.raises(ValueError, match="unknown byzsgd-rule 'mean'"):
        softmax_client().handle(byzsgd_message([theta(1)], step=1, rule="mean"), ctx)
    assert stored_step(ctx) is None
