"""RobustFedAvg: aggregate = model sent + rule(updates), checked against direct computation,
and the Flower FedAvg behaviour it keeps (kwargs, weighting, metric aggregation, start())."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flwr_byz.aggregators import NNM, CenteredClipping, GeometricMedian, Krum, Mean, Median
from flwr_byz.simulations.local import Handler, LocalGrid
from flwr_byz.strategies import RobustFedAvg
from tests.clients.nodes import (
    capture_flwr_log,
    honest_client,
    model,
    sent_arrays,
    shifted,
    train_reply,
    update_for,
    vector_of,
    warnings_of,
)

NODES = [21, 22, 23, 24, 25, 26, 27]
OUTLIERS = (23, 26)  # their updates are far away from the others
KEYS = ("w", "b", "k")


@pytest.fixture
def flwr_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    return capture_flwr_log(caplog, monkeypatch)


def node_update(sent: ArrayRecord, node: int) -> dict[str, np.ndarray]:
    update = update_for(sent, node)
    if node in OUTLIERS:
        update = {k: v + np.float32(3.0 if node == 23 else -2.0) for k, v in update.items()}
    return update


def client(ins: Message, context: Context | None = None) -> Message:
    node = int(ins.metadata.dst_node_id)
    sent = sent_arrays(ins)
    return train_reply(ins, shifted(sent, node_update(sent, node)), num_examples=node - 20)


def one_round(
    strategy: FedAvg,
    sent: ArrayRecord | None = None,
    nodes: Sequence[int] = NODES,
    reply: Handler = client,
) -> tuple[ArrayRecord, list[Message], ArrayRecord | None, MetricRecord | None]:
    sent = model() if sent is None else sent
    grid = LocalGrid(nodes, reply)
    messages = strategy.configure_train(1, sent, ConfigRecord({}), grid)
    replies = list(grid.send_and_receive(messages))
    arrays, metrics = strategy.aggregate_train(1, replies)
    return sent, replies, arrays, metrics


def updates_of(sent: ArrayRecord, replies: Sequence[Message]) -> np.ndarray:
    """``[n, d]`` float64 updates of the replies, in reply order."""
    base = vector_of(sent, KEYS)
    return np.stack([vector_of(r.content["arrays"], KEYS) - base for r in replies])


# --- brute-force rules on numpy [n, d] float64 ----------------------------------------------


def bf_median(x: np.ndarray) -> np.ndarray:
    return np.median(x, axis=0)


def bf_trimmed_mean(x: np.ndarray, f: int) -> np.ndarray:
    return np.sort(x, axis=0)[f : x.shape[0] - f].mean(axis=0)


def bf_krum(x: np.ndarray, f: int) -> np.ndarray:
    n = x.shape[0]
    scores = []
    for i in range(n):
        d2 = sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d2[: n - f - 2]))
    return x[int(np.argmin(scores))]


def bf_nnm(x: np.ndarray, f: int) -> np.ndarray:
    n = x.shape[0]
    out = []
    for i in range(n):
        d2 = [float(((x[i] - x[j]) ** 2).sum()) for j in range(n)]
        nearest = sorted(range(n), key=lambda j: (d2[j], j))[: n - f]
        out.append(x[nearest].mean(axis=0))
    return np.stack(out)


def bf_geomed(x: np.ndarray, iters: int = 5000) -> np.ndarray:
    z = x.mean(axis=0)
    for _ in range(iters):
        w = 1.0 / np.maximum(np.linalg.norm(x - z, axis=1), 1e-12)
        z = (w[:, None] * x).sum(axis=0) / w.sum()
    return z


def bf_centered_clipping(x: np.ndarray, tau: float) -> np.ndarray:
    """One iteration from v = 0: the mean of the inputs clipped to norm tau."""
    norms = np.linalg.norm(x, axis=1)
    return (x * np.minimum(1.0, tau / norms)[:, None]).mean(axis=0)


RULES: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray], float]] = {
    # spec: (f, brute force, tolerance)
    "median": (0, bf_median, 1e-6),
    "trimmedmean": (2, lambda x: bf_trimmed_mean(x, 2), 1e-6),
    "krum": (2, lambda x: bf_krum(x, 2), 1e-6),
    "nnm+krum": (1, lambda x: bf_krum(bf_nnm(x, 1), 1), 1e-6),
    "geomed:eps=1e-10,max_iter=1000": (0, bf_geomed, 1e-5),
    "cc:tau=0.3": (0, lambda x: bf_centered_clipping(x, 0.3), 1e-6),
}


@pytest.mark.parametrize("spec", list(RULES))
def test_aggregate_is_sent_plus_rule_of_updates(spec: str) -> None:
    f, rule, tol = RULES[spec]
    strategy = RobustFedAvg(spec, f=f, min_available_nodes=len(NODES))
    sent, replies, arrays, metrics = one_round(strategy)
    updates = updates_of(sent, replies)
    expected = vector_of(sent, KEYS) + rule(updates)
    assert arrays is not None and list(arrays.keys()) == list(KEYS)
    np.testing.assert_allclose(vector_of(arrays, KEYS), expected, rtol=tol, atol=tol)
    # the rules matter here: the plain mean of the updates is far from every result
    mean = vector_of(sent, KEYS) + updates.mean(axis=0)
    assert np.abs(vector_of(arrays, KEYS) - mean).max() > 0.1
    assert metrics is not None and metrics["accepted"] == 7 and metrics["skipped"] == 0


def test_krum_picks_an_inlier() -> None:
    _, replies, arrays, _ = one_round(RobustFedAvg("krum", f=2, min_available_nodes=7))
    assert arrays is not None
    picked = [
        r
        for r in replies
        if np.array_equal(vector_of(r.content["arrays"], KEYS), vector_of(arrays, KEYS))
    ]
    assert len(picked) == 1 and picked[0].metadata.src_node_id not in OUTLIERS


@pytest.mark.parametrize(
    ("spec", "f", "obj"),
    [
        ("median", None, Median()),
        ("krum", 2, Krum(f=2)),
        ("nnm+krum", 1, NNM(f=1, base=Krum(f=1))),
        ("geomed", None, GeometricMedian()),
        ("cc:0.3", None, CenteredClipping(tau=0.3)),
    ],
)
def test_spec_string_and_object_are_equivalent(spec: str, f: int | None, obj: object) -> None:
    by_spec = RobustFedAvg(spec, f=f, min_available_nodes=7)
    by_obj = RobustFedAvg(obj, min_available_nodes=7)  # type: ignore[arg-type]
    assert by_spec.aggregator == by_obj.aggregator
    sent, grid = model(), LocalGrid(NODES, client)
    messages = list(by_spec.configure_train(1, sent, ConfigRecord({}), grid))
    by_obj.configure_train(1, sent, ConfigRecord({}), grid)
    replies = list(grid.send_and_receive(messages))
    a, _ = by_spec.aggregate_train(1, replies)
    b, _ = by_obj.aggregate_train(1, replies)
    assert a is not None and b is not None
    assert np.array_equal(vector_of(a, KEYS), vector_of(b, KEYS))


def test_f_with_a_spec_string() -> None:
    assert RobustFedAvg("krum").aggregator.f == 0
    assert RobustFedAvg("krum", f=2).aggregator.f == 2
    nested = RobustFedAvg("nnm+krum", f=2).aggregator
    assert nested == NNM(f=2, base=Krum(f=2))


def test_f_none_keeps_the_object_and_its_f() -> None:
    krum = Krum(f=2)
    assert RobustFedAvg(krum).aggregator is krum


def test_f_lowers_an_objects_f_without_mutating_it() -> None:
    krum = Krum(f=3)
    strategy = RobustFedAvg(krum, f=1)
    assert strategy.aggregator == Krum(f=1)
    assert krum.f == 3


def test_f_raises_an_objects_f() -> None:
    assert RobustFedAvg(Krum(), f=2).aggregator == Krum(f=2)
    assert RobustFedAvg(NNM(base=Krum()), f=2).aggregator == NNM(f=2, base=Krum(f=2))


def test_aggregator_must_be_callable_or_a_spec() -> None:
    with pytest.raises(TypeError):
        RobustFedAvg(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RobustFedAvg("no-such-rule")


@pytest.mark.parametrize("spec", ["mean", "median", "geomed"])
def test_weighted_rules_are_accepted(spec: str) -> None:
    assert RobustFedAvg(spec, weighted=True).weighted


@pytest.mark.parametrize("aggregator", ["krum", "trimmedmean", "nnm+median", Krum(f=1)])
def test_weighted_without_a_weighted_form_is_refused(aggregator: object) -> None:
    with pytest.raises(ValueError, match="weighted"):
        RobustFedAvg(aggregator, f=1, weighted=True)  # type: ignore[arg-type]


def test_weighted_mean_equals_flowers_fedavg() -> None:
    sent, replies, ours, our_metrics = one_round(
        RobustFedAvg(Mean(), weighted=True, min_available_nodes=7)
    )
    flower, flower_metrics = FedAvg(min_available_nodes=7).aggregate_train(1, replies)
    assert ours is not None and flower is not None
    np.testing.assert_allclose(vector_of(ours, KEYS), vector_of(flower, KEYS), rtol=1e-5, atol=1e-6)
    # and it is the weighted mean, not the plain one
    w = np.array([int(r.metadata.src_node_id) - 20 for r in replies], dtype=np.float64)
    weighted = vector_of(sent, KEYS) + (w[:, None] * updates_of(sent, replies)).sum(0) / w.sum()
    np.testing.assert_allclose(vector_of(ours, KEYS), weighted, rtol=1e-5, atol=1e-6)
    assert (
        np.abs(
            vector_of(ours, KEYS) - vector_of(sent, KEYS) - updates_of(sent, replies).mean(0)
        ).max()
        > 0.1
    )
    assert our_metrics is not None and flower_metrics is not None
    assert our_metrics["train_loss"] == pytest.approx(flower_metrics["train_loss"])


def test_weighted_median_uses_the_counts() -> None:
    """Weights 1..7 (float64 model: see test_weighted.py for the float32 tie defect)."""
    sent = model("float64")
    strategy = RobustFedAvg("median", weighted=True, min_available_nodes=7)
    _, replies, arrays, _ = one_round(strategy, sent)
    x = updates_of(sent, replies)
    w = np.array([int(r.metadata.src_node_id) - 20 for r in replies], dtype=np.float64)
    expected = np.empty(x.shape[1])
    for j in range(x.shape[1]):  # the weighted median of Median.weighted's docstring
        order = np.argsort(x[:, j], kind="stable")
        cum = np.cumsum(w[order]) / w.sum()
        lo, hi = np.argmax(2 * cum >= 1 - 1e-12), np.argmax(2 * cum > 1 + 1e-12)
        expected[j] = (x[order[lo], j] + x[order[hi], j]) / 2
    assert arrays is not None
    assert arrays is not None and arrays["w"].dtype == "float64"
    np.testing.assert_allclose(
        vector_of(arrays, KEYS), vector_of(sent, KEYS) + expected, atol=1e-12
    )
    assert not np.allclose(expected, np.median(x, axis=0))


def test_flower_kwargs_pass_through() -> None:
    seen: list[int] = []

    def metrics_fn(contents: list[RecordDict], key: str) -> MetricRecord:
        seen.append(len(contents))
        return MetricRecord({"custom": float(sum(c["m"][key] for c in contents))})  # type: ignore[index, misc]

    strategy = RobustFedAvg(
        "mean",
        weighted=True,
        fraction_train=0.5,
        min_train_nodes=2,
        min_available_nodes=6,
        weighted_by_key="n",
        arrayrecord_key="model",
        configrecord_key="cfg",
        train_metrics_aggr_fn=metrics_fn,
    )
    assert (strategy.fraction_train, strategy.min_train_nodes) == (0.5, 2)

    def reply(ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        sent = ins.content["model"]
        assert isinstance(sent, ArrayRecord)
        content = RecordDict(
            {
                "model": shifted(sent, update_for(sent, node)),
                "m": MetricRecord({"n": node - 20, "loss": 1.0}),
            }
        )
        return Message(content, reply_to=ins)

    sent = model()
    grid = LocalGrid(NODES[:6], reply)
    messages = list(strategy.configure_train(4, sent, ConfigRecord({"lr": 0.1}), grid))
    assert len(messages) == 3  # int(6 * 0.5)
    for msg in messages:
        assert set(msg.content.keys()) == {"model", "cfg"}
        assert msg.content["cfg"]["server-round"] == 4 and msg.content["cfg"]["lr"] == 0.1
    replies = list(grid.send_and_receive(messages))
    arrays, metrics = strategy.aggregate_train(4, replies)
    w = np.array([int(r.metadata.src_node_id) - 20 for r in replies], dtype=np.float64)
    base = vector_of(sent, KEYS)
    x = np.stack([vector_of(r.content["model"], KEYS) - base for r in replies])
    assert arrays is not None
    np.testing.assert_allclose(
        vector_of(arrays, KEYS), base + (w[:, None] * x).sum(0) / w.sum(), atol=1e-6
    )
    assert seen == [3]
    assert metrics is not None and metrics["custom"] == float(w.sum())


def test_fraction_train_zero_sends_nothing() -> None:
    strategy = RobustFedAvg("median", fraction_train=0.0)
    grid = LocalGrid(NODES, client)
    assert list(strategy.configure_train(1, model(), ConfigRecord({}), grid)) == []
    arrays, metrics = strategy.aggregate_train(1, [])
    assert arrays is None and metrics is not None and metrics["skipped"] == 1


def test_aggregate_without_configure_returns_none(flwr_log: pytest.LogCaptureFixture) -> None:
    strategy = RobustFedAvg("median", min_available_nodes=7)
    ins = Message(RecordDict({"arrays": model()}), 21, "train")
    assert strategy.aggregate_train(1, [client(ins)]) == (None, None)
    assert any("no model was sent" in m for m in warnings_of(flwr_log))
    # configured for round 1, asked to aggregate round 2
    _, replies, _, _ = one_round(strategy)
    assert strategy.aggregate_train(2, replies) == (None, None)


def test_non_finite_aggregate_keeps_the_previous_model(flwr_log: pytest.LogCaptureFixture) -> None:
    """Finite float32 updates whose mean overflows."""

    def huge(ins: Message, context: Context) -> Message:
        sent = sent_arrays(ins)
        return train_reply(ins, shifted(sent, {"b": np.full(4, 3e38, np.float32)}))

    _, _, arrays, metrics = one_round(RobustFedAvg("mean", min_available_nodes=7), reply=huge)
    assert arrays is None
    assert metrics is not None and metrics["skipped"] == 1 and metrics["accepted"] == 7
    assert any("non-finite aggregate" in m for m in warnings_of(flwr_log))


def _mixed_model() -> ArrayRecord:
    rng = np.random.default_rng(3)
    return ArrayRecord(
        {
            "w32": Array(rng.normal(size=(2, 3)).astype(np.float32)),
            "w64": Array(rng.normal(size=4).astype(np.float64)),
            "h16": Array(rng.normal(size=3).astype(np.float16)),
            "count": Array(np.array([5, 9], dtype=np.int64)),
        }
    )


def test_returned_arrays_keep_the_sent_dtypes() -> None:
    def reply(ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        sent = sent_arrays(ins)
        delta = update_for(sent, node)
        delta["count"] = np.array([1, 2], dtype=np.int64)  # every client counts the same
        return train_reply(ins, shifted(sent, delta))

    sent = _mixed_model()
    strategy = RobustFedAvg("median", min_available_nodes=7)
    _, replies, arrays, _ = one_round(strategy, sent, reply=reply)
    assert arrays is not None
    assert list(arrays.keys()) == list(sent.keys())
    for key in sent:
        assert arrays[key].dtype == sent[key].dtype
        assert arrays[key].shape == sent[key].shape
        assert arrays[key].numpy().dtype == sent[key].numpy().dtype
    assert arrays["count"].numpy().tolist() == [6, 11]
    # float64 precision is kept for the float64 array (the vector is float64)
    x = np.stack([r.content["arrays"]["w64"].numpy() - sent["w64"].numpy() for r in replies])
    np.testing.assert_allclose(
        arrays["w64"].numpy(), sent["w64"].numpy() + np.median(x, axis=0), rtol=1e-13, atol=0
    )


def test_start_runs_rounds_with_the_local_grid() -> None:
    """Flower's own start(): 3 rounds, the evaluation replies go through FedAvg unchanged."""
    strategy = RobustFedAvg("median", min_available_nodes=5)
    grid = LocalGrid(NODES[:5], honest_client())
    initial = model()
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=3)
    base = vector_of(initial, KEYS)
    steps = np.stack(
        [vector_of(shifted(initial, update_for(initial, n)), KEYS) - base for n in NODES[:5]]
    )
    # the update of each node is the same every round (update_for depends on the node only)
    np.testing.assert_allclose(
        vector_of(result.arrays, KEYS), base + 3 * np.median(steps, axis=0), atol=1e-5
    )
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    assert all(
        m["skipped"] == 0 and m["accepted"] == 5 for m in result.train_metrics_clientapp.values()
    )
    assert result.evaluate_metrics_clientapp[3]["eval_loss"] == pytest.approx(np.mean(NODES[:5]))


def test_zero_dim_arrays_survive_several_rounds() -> None:
    initial = ArrayRecord(
        {
            "w": Array(np.ones(3, dtype=np.float32)),
            "num_batches_tracked": Array(np.array(4, dtype=np.int64)),
        }
    )

    def reply(ins: Message, context: Context) -> Message:
        """A torch client: loads the model (accepting [1] for []), returns its own shapes."""
        sent = sent_arrays(ins)
        node = int(ins.metadata.dst_node_id)
        state = {
            "w": torch.from_numpy(sent["w"].numpy().copy()) + 0.01 * node,
            "num_batches_tracked": torch.tensor(
                int(sent["num_batches_tracked"].numpy().reshape(-1)[0]) + 1
            ),
        }
        return train_reply(ins, ArrayRecord(state))

    strategy = RobustFedAvg("median", min_available_nodes=5, fraction_evaluate=0.0)
    result = strategy.start(grid=LocalGrid(NODES[:5], reply), initial_arrays=initial, num_rounds=2)
    assert result.train_metrics_clientapp[2]["skipped"] == 0
    assert result.arrays["num_batches_tracked"].shape == ()
    assert int(result.arrays["num_batches_tracked"].numpy()) == 6
