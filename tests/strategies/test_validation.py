"""Reply validation inside a RobustFedAvg round: every rejection reason lets the round go on.

Each round runs through a LocalGrid: ``configure_train`` samples the nodes and builds the
instructions, in-process clients answer (some of them badly), ``aggregate_train`` validates
and aggregates. The expected model is computed by brute force from the good replies only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from flwr_byz.protocol.records import layout_of
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.strategies import REASONS, RobustFedAvg, validate_replies
from tests.clients.nodes import (
    capture_flwr_log,
    model,
    sent_arrays,
    shifted,
    train_reply,
    update_for,
    vector_of,
    warnings_of,
)

NODES = [11, 12, 13, 14, 15, 16, 17]
KEYS = ("w", "b", "k")
BuildReply = Callable[[Message], Message | list[Message]]


@pytest.fixture
def flwr_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    return capture_flwr_log(caplog, monkeypatch)


def honest_arrays(ins: Message) -> ArrayRecord:
    sent = sent_arrays(ins)
    return shifted(sent, update_for(sent, int(ins.metadata.dst_node_id)))


def honest(ins: Message, num_examples: float | None = 10) -> Message:
    return train_reply(ins, honest_arrays(ins), num_examples)


def weight_of(node: int) -> float:
    return float(node - 10)  # 1, 2, ..., 7: distinct so that weighting matters


def run_round(
    strategy: RobustFedAvg,
    bad: dict[int, BuildReply],
    nodes: Sequence[int] = NODES,
    server_round: int = 1,
    weights: Callable[[int], float] | None = None,
) -> tuple[ArrayRecord, ArrayRecord | None, MetricRecord | None]:
    """One round: (model sent, aggregated arrays, metrics)."""
    sent = model()

    def client(ins: Message, context: Context) -> Message | list[Message]:
        node = int(ins.metadata.dst_node_id)
        if node in bad:
            return bad[node](ins)
        return honest(ins, weights(node) if weights else 10)

    grid = LocalGrid(nodes, client)
    messages = strategy.configure_train(server_round, sent, ConfigRecord({}), grid)
    replies = list(grid.send_and_receive(messages))
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return sent, arrays, metrics


def good_updates(sent: ArrayRecord, nodes: Sequence[int]) -> np.ndarray:
    """``[n, d]`` float64 updates (float32 reply - sent) of the honest replies of ``nodes``."""
    base = vector_of(sent, KEYS)
    rows = [vector_of(shifted(sent, update_for(sent, n)), KEYS) - base for n in nodes]
    return np.stack(rows)


def assert_model(arrays: ArrayRecord | None, sent: ArrayRecord, step: np.ndarray) -> None:
    """``arrays`` is finite and equals ``sent + step`` (float32 tolerance)."""
    assert arrays is not None
    assert list(arrays.keys()) == list(KEYS)
    got = vector_of(arrays, KEYS)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, vector_of(sent, KEYS) + step, rtol=1e-6, atol=1e-6)


def stranger_reply(ins: Message, node: int = 99) -> Message:
    """A well-formed reply from ``node``, which the round was not sent to."""
    fake_ins = Message(ins.content, node, "train")
    arrays = shifted(sent_arrays(ins), {"w": np.full((3, 4), 100.0, np.float32)})
    return train_reply(fake_ins, arrays)


def with_arrays(ins: Message, arrays: dict[str, Array]) -> Message:
    return train_reply(ins, ArrayRecord(arrays))


def honest_dict(ins: Message) -> dict[str, Array]:
    return dict(honest_arrays(ins).items())


def _drop(ins: Message) -> Message:
    arrays = honest_dict(ins)
    del arrays["b"]
    return with_arrays(ins, arrays)


def _extra_key(ins: Message) -> Message:
    return with_arrays(ins, {**honest_dict(ins), "z": Array(np.zeros(2, np.float32))})


def _shape(ins: Message) -> Message:
    arrays = honest_dict(ins)
    arrays["w"] = Array(np.ascontiguousarray(arrays["w"].numpy().reshape(4, 3)))
    return with_arrays(ins, arrays)


def _dtype(ins: Message) -> Message:
    arrays = {k: Array(v.numpy().astype(np.float64)) for k, v in honest_dict(ins).items()}
    return with_arrays(ins, arrays)


def _malformed(ins: Message) -> Message:
    arrays = honest_dict(ins)
    arrays["w"] = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=b"\x93NUMPY")
    return with_arrays(ins, arrays)


def _short_bytes(ins: Message) -> Message:
    arrays = honest_dict(ins)
    w = arrays["w"]
    arrays["w"] = Array(
        dtype=w.dtype, shape=w.shape, stype=w.stype, data=Array(np.zeros(5, np.float32)).data
    )
    return with_arrays(ins, arrays)


def _oversize(mode: str) -> BuildReply:
    """``w`` declares its [3, 4] float32 but carries 100x the data: in the ``.npy`` header
    (``header``) or after a correct one (``trailing``)."""

    def build(ins: Message) -> Message:
        arrays = honest_dict(ins)
        w = arrays["w"]
        big = np.zeros(1200, np.float32)
        data = Array(big).data if mode == "header" else w.data + big.tobytes()
        arrays["w"] = Array(dtype=w.dtype, shape=w.shape, stype=w.stype, data=data)
        return with_arrays(ins, arrays)

    return build


def _non_finite(value: float) -> BuildReply:
    def build(ins: Message) -> Message:
        arrays = honest_dict(ins)
        w = arrays["w"].numpy().copy()
        w[1, 2] = value
        arrays["w"] = Array(w)
        return with_arrays(ins, arrays)

    return build


def _missing_record(ins: Message) -> Message:
    content = RecordDict({"metrics": MetricRecord({"train_loss": 1.0, "num-examples": 10})})
    return Message(content, reply_to=ins)


def _extra_record(ins: Message) -> Message:
    content = RecordDict(
        {
            "arrays": honest_arrays(ins),
            "extra": ArrayRecord({"x": Array(np.zeros(3, np.float32))}),
            "metrics": MetricRecord({"train_loss": 1.0, "num-examples": 10}),
        }
    )
    return Message(content, reply_to=ins)


def _duplicate(ins: Message) -> list[Message]:
    second = shifted(sent_arrays(ins), {"w": np.full((3, 4), 50.0, np.float32)})
    return [honest(ins), train_reply(ins, second)]


@dataclass(frozen=True)
class Case:
    """Bad replies for one reason: which nodes misbehave and how, and which nodes' honest
    replies still count (None: every node not in ``bad``)."""

    bad: dict[int, BuildReply]
    rejected: int
    good: tuple[int, ...] | None = None
    weighted: bool = False


CASES: dict[str, Case] = {
    "error-reply": Case(
        {12: lambda ins: Message(Error(code=7, reason="client crashed"), reply_to=ins)}, 1
    ),
    "unknown-node": Case({13: lambda ins: [honest(ins), stranger_reply(ins)]}, 1, tuple(NODES)),
    "duplicate": Case({14: _duplicate, 16: _duplicate}, 2, tuple(NODES)),
    "missing-record": Case({11: _missing_record}, 1),
    "extra-record": Case({15: _extra_record}, 1),
    "missing-key": Case({12: _drop, 17: _drop}, 2),
    "extra-key": Case({13: _extra_key}, 1),
    "shape": Case({14: _shape}, 1),
    "dtype": Case({15: _dtype}, 1),
    "oversize": Case({12: _oversize("header"), 15: _oversize("trailing")}, 2),
    "malformed": Case({16: _malformed, 11: _short_bytes}, 2),
    "non-finite": Case({17: _non_finite(math.nan), 12: _non_finite(-math.inf)}, 2),
    "bad-weight": Case(
        {
            13: lambda ins: honest(ins, num_examples=0),
            16: lambda ins: honest(ins, num_examples=None),
        },
        2,
        weighted=True,
    ),
}


def test_every_reason_has_a_case() -> None:
    assert set(CASES) == set(REASONS)


@pytest.mark.parametrize("reason", REASONS)
def test_a_bad_reply_is_rejected_and_the_round_goes_on(
    reason: str, flwr_log: pytest.LogCaptureFixture
) -> None:
    case = CASES[reason]
    strategy = RobustFedAvg(
        "mean" if case.weighted else "median",
        weighted=case.weighted,
        min_available_nodes=len(NODES),
    )
    sent, arrays, metrics = run_round(strategy, case.bad, weights=weight_of)
    good = case.good if case.good is not None else tuple(n for n in NODES if n not in case.bad)
    updates = good_updates(sent, good)
    if case.weighted:
        w = np.array([weight_of(n) for n in good])
        step = (w[:, None] * updates).sum(axis=0) / w.sum()
    else:
        step = np.median(updates, axis=0)
    assert_model(arrays, sent, step)

    assert metrics is not None
    assert metrics["rejected"] == case.rejected
    assert metrics[f"rejected-{reason}"] == case.rejected
    assert metrics["accepted"] == len(good)
    assert metrics["skipped"] == 0
    assert not [k for k in metrics if k.startswith("rejected-") and k != f"rejected-{reason}"]

    warnings = warnings_of(flwr_log)
    named = case.good is not None and reason == "unknown-node"
    culprits = [99] if named else list(case.bad)
    for node in culprits:
        assert any(f"node {node}" in m and reason in m for m in warnings), (node, warnings)


def test_the_weight_is_not_checked_when_unweighted() -> None:
    """num-examples = 0 / missing is no reason to reject an unweighted round's reply."""
    bad = CASES["bad-weight"].bad
    sent, arrays, metrics = run_round(RobustFedAvg("median", min_available_nodes=7), bad)
    assert_model(arrays, sent, np.median(good_updates(sent, NODES), axis=0))
    assert metrics is not None and metrics["accepted"] == 7 and metrics["rejected"] == 0


@pytest.mark.parametrize("value", [-3.0, math.nan, math.inf, [1.0, 2.0]])
def test_bad_weight_values(value: object) -> None:
    def bad(ins: Message) -> Message:
        return train_reply(
            ins, honest_arrays(ins), num_examples=None, metrics={"num-examples": value}
        )

    strategy = RobustFedAvg("mean", weighted=True, min_available_nodes=7)
    sent, arrays, metrics = run_round(strategy, {14: bad}, weights=weight_of)
    good = [n for n in NODES if n != 14]
    w = np.array([weight_of(n) for n in good])
    assert_model(arrays, sent, (w[:, None] * good_updates(sent, good)).sum(0) / w.sum())
    assert metrics is not None and metrics["rejected-bad-weight"] == 1


def test_too_few_valid_replies_keep_the_previous_model(flwr_log: pytest.LogCaptureFixture) -> None:
    strategy = RobustFedAvg("krum", f=2, min_available_nodes=7)  # Krum needs n >= 7
    bad = {12: _non_finite(math.nan), 15: _drop}
    _, arrays, metrics = run_round(strategy, bad)
    assert arrays is None
    assert metrics is not None
    assert metrics["skipped"] == 1
    assert metrics["accepted"] == 5 and metrics["rejected"] == 2
    assert metrics["rejected-non-finite"] == 1 and metrics["rejected-missing-key"] == 1
    assert any("keeping the previous global model" in m for m in warnings_of(flwr_log))


def test_enough_valid_replies_for_krum() -> None:
    """Control for the test above: all 7 valid, Krum f=2 runs and picks an honest update."""
    sent, arrays, metrics = run_round(RobustFedAvg("krum", f=2, min_available_nodes=7), {})
    assert metrics is not None and metrics["skipped"] == 0
    updates = good_updates(sent, NODES)
    d2 = ((updates[:, None, :] - updates[None, :, :]) ** 2).sum(-1)
    scores = [np.sort(np.delete(row, i))[: 7 - 2 - 2].sum() for i, row in enumerate(d2)]
    assert_model(arrays, sent, updates[int(np.argmin(scores))])


def test_all_replies_bad_keep_the_previous_model(flwr_log: pytest.LogCaptureFixture) -> None:
    bad: dict[int, BuildReply] = {n: _non_finite(math.nan) for n in NODES}
    bad[11] = lambda ins: Message(Error(code=1, reason="x"), reply_to=ins)
    _, arrays, metrics = run_round(RobustFedAvg("median", min_available_nodes=7), bad)
    assert arrays is None
    assert metrics is not None
    assert metrics["skipped"] == 1
    assert metrics["accepted"] == 0 and metrics["rejected"] == 7
    assert metrics["rejected-non-finite"] == 6 and metrics["rejected-error-reply"] == 1
    assert any("keeping the previous global model" in m for m in warnings_of(flwr_log))


def test_no_reply_at_all_keeps_the_previous_model() -> None:
    bad: dict[int, BuildReply] = {n: (lambda ins: []) for n in NODES}
    _, arrays, metrics = run_round(RobustFedAvg("median", min_available_nodes=7), bad)
    assert arrays is None
    assert metrics is not None and metrics["skipped"] == 1 and metrics["accepted"] == 0


def test_replies_from_nodes_not_sampled_are_rejected(flwr_log: pytest.LogCaptureFixture) -> None:
    """Half the nodes are sampled; every node answers (the others with a valid reply)."""
    strategy = RobustFedAvg("mean", fraction_train=0.5, min_train_nodes=3, min_available_nodes=6)
    nodes = NODES[:6]
    sent = model()
    grid = LocalGrid(nodes, lambda ins, context: honest(ins))
    messages = list(strategy.configure_train(1, sent, ConfigRecord({}), grid))
    sampled = sorted(int(m.metadata.dst_node_id) for m in messages)
    assert len(sampled) == 3
    content = messages[0].content
    replies = [honest(Message(content, n, "train")) for n in nodes]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert_model(arrays, sent, good_updates(sent, sampled).mean(axis=0))
    assert metrics is not None
    assert metrics["rejected-unknown-node"] == 3 and metrics["accepted"] == 3
    for node in set(nodes) - set(sampled):
        assert any(f"node {node}" in m and "unknown-node" in m for m in warnings_of(flwr_log))


def test_duplicate_replies_count_once() -> None:
    """With the mean, a counted duplicate would change the result."""
    bad: dict[int, BuildReply] = {13: lambda ins: [honest(ins), honest(ins), honest(ins)]}
    sent, arrays, metrics = run_round(RobustFedAvg("mean", min_available_nodes=7), bad)
    assert_model(arrays, sent, good_updates(sent, NODES).mean(axis=0))
    assert metrics is not None
    assert metrics["rejected-duplicate"] == 2 and metrics["accepted"] == 7


def test_arrays_in_another_key_order_are_accepted() -> None:
    def reordered(ins: Message) -> Message:
        arrays = honest_dict(ins)
        return with_arrays(ins, {k: arrays[k] for k in reversed(list(arrays))})

    bad: dict[int, BuildReply] = {n: reordered for n in NODES[::2]}
    sent, arrays, metrics = run_round(RobustFedAvg("mean", min_available_nodes=7), bad)
    assert_model(arrays, sent, good_updates(sent, NODES).mean(axis=0))
    assert metrics is not None and metrics["accepted"] == 7 and metrics["rejected"] == 0


def test_an_arrayrecord_under_another_key_is_accepted() -> None:
    def renamed(ins: Message) -> Message:
        return train_reply(ins, honest_arrays(ins), array_key="model")

    sent, arrays, metrics = run_round(RobustFedAvg("mean", min_available_nodes=7), {12: renamed})
    assert_model(arrays, sent, good_updates(sent, NODES).mean(axis=0))
    assert metrics is not None and metrics["accepted"] == 7


def test_odd_metric_records_are_aggregated_unweighted(flwr_log: pytest.LogCaptureFixture) -> None:
    """An extra metric key, a missing num-examples, two MetricRecords: the arrays still count;
    the metrics of the replies with one usable MetricRecord are averaged by FedAvg's rule."""

    def extra_key(ins: Message) -> Message:
        return train_reply(ins, honest_arrays(ins), 30, {"train_loss": 5.0, "extra": 2.0})

    def no_count(ins: Message) -> Message:
        return train_reply(ins, honest_arrays(ins), None, {"train_loss": 100.0})

    def two_records(ins: Message) -> Message:
        content = RecordDict(
            {
                "arrays": honest_arrays(ins),
                "m1": MetricRecord({"train_loss": 100.0, "num-examples": 10}),
                "m2": MetricRecord({"other": 1.0}),
            }
        )
        return Message(content, reply_to=ins)

    bad: dict[int, BuildReply] = {12: extra_key, 14: no_count, 15: two_records}
    sent, arrays, metrics = run_round(RobustFedAvg("mean", min_available_nodes=7), bad)
    assert_model(arrays, sent, good_updates(sent, NODES).mean(axis=0))
    assert metrics is not None
    assert metrics["accepted"] == 7 and metrics["rejected"] == 0 and metrics["skipped"] == 0
    # usable: 4 honest replies (loss 1, 10 examples) and node 12 (loss 5, 30 examples)
    assert metrics["train_loss"] == pytest.approx((4 * 10 * 1.0 + 30 * 5.0) / 70)
    assert metrics["extra"] == pytest.approx(30 * 2.0 / 70)


def test_inconsistent_metric_lists_do_not_stop_the_round(
    flwr_log: pytest.LogCaptureFixture,
) -> None:
    """Flower's metric aggregation raises on lists of different lengths: logged, skipped."""

    def listed(length: int) -> BuildReply:
        return lambda ins: train_reply(ins, honest_arrays(ins), 10, {"hist": [1.0] * length})

    bad = {12: listed(2), 13: listed(3)}
    sent, arrays, metrics = run_round(RobustFedAvg("median", min_available_nodes=7), bad)
    assert_model(arrays, sent, np.median(good_updates(sent, NODES), axis=0))
    assert metrics is not None and metrics["accepted"] == 7 and metrics["skipped"] == 0
    assert any("client metrics not aggregated" in m for m in warnings_of(flwr_log))


# --- validate_replies on its own ----------------------------------------------------------


def test_validate_replies_vectors_weights_and_metrics() -> None:
    sent = model()
    ins = [Message(RecordDict({"arrays": sent}), n, "train") for n in (1, 2, 3, 4)]
    replies = [
        honest(ins[0], 4),
        honest(ins[1], 6),
        Message(Error(code=0, reason="x"), reply_to=ins[2]),
        train_reply(ins[3], honest_arrays(ins[3]), num_examples=-1),
    ]
    layout = layout_of(sent)
    checked = validate_replies(
        replies, {"arrays": layout}, expected_nodes=[1, 2, 3, 4], weighted_by_key="num-examples"
    )
    assert checked.node_ids == [1, 2]
    assert checked.vectors.shape == (2, layout.numel) and checked.vectors.dtype == torch.float32
    expected = np.stack([vector_of(honest_arrays(i)) for i in ins[:2]])
    np.testing.assert_array_equal(checked.vectors.numpy(), expected.astype(np.float32))
    assert checked.weights is not None and checked.weights.tolist() == [4.0, 6.0]
    assert [(r.node_id, r.reason) for r in checked.rejected] == [
        (3, "error-reply"),
        (4, "bad-weight"),
    ]
    assert checked.metrics() == {
        "accepted": 2,
        "rejected": 2,
        "rejected-bad-weight": 1,
        "rejected-error-reply": 1,
    }


def test_validate_replies_without_replies() -> None:
    layout = layout_of(model())
    checked = validate_replies([], {"arrays": layout})
    assert checked.node_ids == [] and checked.vectors.shape == (0, layout.numel)
    assert checked.weights is None
    assert checked.metrics() == {"accepted": 0, "rejected": 0}
