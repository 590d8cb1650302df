"""The batched engine's building blocks against the per-client code they replace: the
``torch.func`` gradients against ``GradientClient.gradient`` (autograd, one model per client),
``local_sgd`` against ``train_epochs``, the minibatches against ``GradientClient``'s, the
message sizes against real Messages, and the attack on stacked rows against ``ByzantineGrid``'s
``apply_attack``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from flwr_byz.attacks import ALIE, SignFlip
from flwr_byz.clients.gradient import GradientClient, _batch
from flwr_byz.clients.injection import apply_attack
from flwr_byz.compressors import get_compressor
from flwr_byz.protocol.keys import PAYLOAD_KEY, VECTOR_KEY
from flwr_byz.protocol.records import flatten, layout_of, payload_record, unflatten
from flwr_byz.simulations.batched.attack import attack_rows
from flwr_byz.simulations.batched.bytes import WireSizes
from flwr_byz.simulations.batched.data import StackedData, minibatch_rows
from flwr_byz.simulations.batched.grads import (
    FunctionalModel,
    _size_groups,
    local_plan,
    local_sgd,
)
from flwr_byz.simulations.local import ensure_task_identity
from flwr_byz.simulations.metering import message_bytes
from flwr_byz.simulations.models import build_model
from flwr_byz.simulations.training import float_precision, objective, train_epochs

SHAPES = {"logreg": (40,), "mlp": (40,), "cnn1d": (1, 40)}


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    with float_precision(torch.float64):
        yield


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, SHAPES[name], 10)


def _data(n: int, name: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SHAPES[name], generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 10, (n,), generator=gen)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_gradients_equal_autograd_per_client(name: str, weight_decay: float) -> None:
    model = _model(name)
    arrays = ArrayRecord(model.state_dict())
    layout = layout_of(arrays).floating()
    fm = FunctionalModel(_model(name, seed=5), layout)  # its own values do not matter
    x, y = _data(30, name)
    # three clients with unequal batches: 5, 3 and 12 real samples (padded to 12)
    rows = [torch.arange(0, 5), torch.arange(5, 8), torch.arange(8, 20)]
    index = torch.zeros(3, 12, dtype=torch.long)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for i, r in enumerate(rows):
        index[i] = r[0]
        index[i, : len(r)] = r
        mask[i, : len(r)] = True
    point = flatten(arrays, layout)
    points = torch.stack([point, 1.1 * point, 0.9 * point])
    for at in (point, points):  # one point for all, and a point per client
        grads, losses = fm.gradients(at, x[index], y[index], mask, weight_decay)
        client = GradientClient(
            model_fn=lambda cfg: _model(name),
            loss_fn=lambda m, xb, yb: objective(m, xb, yb, weight_decay),
            data_fn=lambda ctx, cfg: (x, y),
        )
        for i, r in enumerate(rows):
            p = at if at.dim() == 1 else at[i]
            want, loss = client.gradient(unflatten(p, layout), layout, x[r], y[r], {})
            assert _rel(grads[i], want) < 1e-13
            assert float(losses[i]) == pytest.approx(loss, rel=1e-13)


def test_unequal_batches_are_grouped_without_changing_the_gradients() -> None:
    name = "mlp"
    model = _model(name)
    layout = layout_of(ArrayRecord(model.state_dict())).floating()
    fm = FunctionalModel(model, layout)
    point = flatten(ArrayRecord(model.state_dict()), layout)
    x, y = _data(200, name)
    sizes = [150, 3, 140, 2]
    assert len(_size_groups(sizes)) > 1
    index = torch.zeros(4, 150, dtype=torch.long)
    mask = torch.arange(150).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    index[mask] = torch.cat([torch.arange(s) for s in sizes])
    grouped, _ = fm.gradients(point, x[index], y[index], mask)
    for i, s in enumerate(sizes):
        alone, _ = fm.gradients(
            point, x[index[i : i + 1, :s]], y[index[i : i + 1, :s]], mask[i : i + 1, :s]
        )
        assert _rel(grouped[i], alone[0]) < 1e-14


@pytest.mark.parametrize("name", ["mlp", "cnn1d"])
@pytest.mark.parametrize(
    ("momentum", "weight_decay", "batch_size", "epochs"),
    [(0.0, 0.0, 4, 1), (0.9, 0.01, 4, 2), (0.5, 0.0, 64, 2)],
)
def test_local_sgd_equals_train_epochs(
    name: str, momentum: float, weight_decay: float, batch_size: int, epochs: int
) -> None:
    model = _model(name)
    layout = layout_of(ArrayRecord(model.state_dict())).floating()
    fm = FunctionalModel(_model(name), layout)
    start = flatten(ArrayRecord(model.state_dict()), layout)
    x, y = _data(45, name)
    sizes, offsets, seeds = [13, 7, 25, 0], [0, 13, 20, 45], [5, 6, 7, 8]  # one client: no data
    plan = local_plan(offsets, sizes, seeds, epochs=epochs, batch_size=batch_size)
    models, losses = local_sgd(
        fm, start, x, y, plan, lr=0.1, momentum=momentum, weight_decay=weight_decay
    )
    for i, (m, off, seed) in enumerate(zip(sizes, offsets, seeds, strict=True)):
        twin = _model(name)
        twin.load_state_dict(model.state_dict())
        loss = train_epochs(
            twin,
            x[off : off + m],
            y[off : off + m],
            epochs=epochs,
            batch_size=batch_size,
            lr=0.1,
            seed=seed,
            momentum=momentum,
            weight_decay=weight_decay,
        )
        want = flatten(ArrayRecord(twin.state_dict()), layout)
        assert _rel(models[i], want) < 1e-13
        if m:
            assert float(losses[i]) == pytest.approx(loss, rel=1e-12)
        else:
            assert torch.isnan(losses[i]) and torch.equal(models[i], start)


@pytest.mark.parametrize("size", [0, 3, 10, 50])
def test_minibatches_are_gradient_clients(size: int) -> None:
    for n, seed in [(10, 1), (37, 2**31 - 1), (1, 5)]:
        assert torch.equal(minibatch_rows(n, size, seed), _batch(n, size, seed))
    data = StackedData.load("digits", "dirichlet:0.3", 6, seed=2)
    parts, seeds = [0, 3, 5], [11, 12, 13]
    batches = data.minibatches(parts, size, seeds)
    for i, (p, s) in enumerate(zip(parts, seeds, strict=True)):
        want = data.offsets[p] + _batch(data.sizes[p], size, s)
        assert torch.equal(batches.index[i][batches.mask[i]], want)


def test_label_flip_flips_the_byzantine_partitions_only() -> None:
    plain = StackedData.load("digits", "iid", 4, seed=0)
    flipped = StackedData.load("digits", "iid", 4, seed=0, flipped=[2])
    assert torch.equal(plain.x, flipped.x)
    for p in range(4):
        rows = slice(plain.offsets[p], plain.offsets[p] + plain.sizes[p])
        expect = 9 - plain.y[rows] if p == 2 else plain.y[rows]
        assert torch.equal(flipped.y[rows], expect)


def test_attack_rows_is_byzantine_grids_attack() -> None:
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    rows[1, 2] = float("nan")  # a non-finite honest row is not among the attack's peers
    byz = torch.tensor([False, False, True, False, True, False])
    replied = torch.tensor([True, True, True, False, True, True])  # node 3: an error reply
    out, count = attack_rows(ALIE(), rows, byz, replied)
    honest = rows[[0, 5]]
    want = apply_attack(ALIE(), honest, rows[[2, 4]])
    assert count == 2 and torch.equal(out[[2, 4]], want)
    assert torch.equal(out[[0, 3, 5]], rows[[0, 3, 5]])
    none, zero = attack_rows(SignFlip(), rows, torch.zeros(6, dtype=torch.bool))
    assert zero == 0 and none is rows


def test_wire_sizes_are_the_messages_sizes() -> None:
    ensure_task_identity()
    model = _model("mlp")
    layout = layout_of(ArrayRecord(model.state_dict())).floating()
    x0 = flatten(ArrayRecord(model.state_dict()), layout)
    config = ConfigRecord({"dataset": "digits", "lr": 0.1, "seed": 3})
    compressor = get_compressor("topk:0.1")
    wire = WireSizes(layout, x0, config, compressor)
    op: dict[str, Any] = {"op": "momentum", "beta": 0.9, "compressor": "topk:0.1"}
    own: dict[int, dict[str, Any]] = {
        1: {"batch-seed": 5, "ef21-version": -1},
        300: {"batch-seed": 2**31 - 1, "ef21-version": 12},
    }
    got = wire.down(7, [1, 300], {"arrays": "model"}, op, lambda n: own[n])
    want = 0
    for node in (1, 300):
        cfg = ConfigRecord(
            {**dict(config.items()), **op, **own[node], "state-key": "a" * 12, "server-round": 7}
        )
        content = RecordDict({"arrays": unflatten(x0, layout), "config": cfg})
        want += message_bytes(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
    assert got == want
    payload = payload_record(compressor.compress(torch.randn(layout.numel, dtype=x0.dtype), 4))
    sent = Message(RecordDict(), dst_node_id=9, message_type=MessageType.TRAIN)
    metrics: dict[str, Any] = {"train-loss": 0.25, "num-examples": 240}
    replies = [
        Message(
            RecordDict({PAYLOAD_KEY: payload, "metrics": MetricRecord(metrics)}), reply_to=sent
        ),
        Message(
            RecordDict({VECTOR_KEY: unflatten(x0, layout), "metrics": MetricRecord(metrics)}),
            reply_to=sent,
        ),
    ]
    assert wire.up([9, 9], [PAYLOAD_KEY, VECTOR_KEY], [metrics, metrics]) == sum(
        message_bytes(r) for r in replies
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flower_mean_is_flowers_fedavg_bit_for_bit(dtype: torch.dtype) -> None:
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from flwr_byz.simulations.batched.fedavg import flower_mean

    model = build_model("mlp", (40,), 10).to(dtype)
    layout = layout_of(ArrayRecord(model.state_dict())).floating()
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(7, layout.numel, generator=gen, dtype=dtype)
    sizes = [13, 1, 250, 7, 7, 99, 3]
    records = [
        RecordDict({"arrays": unflatten(r, layout), "metrics": MetricRecord({"num-examples": m})})
        for r, m in zip(rows, sizes, strict=True)
    ]
    want = flatten(aggregate_arrayrecords(records, "num-examples"), layout)
    assert torch.equal(flower_mean(rows, sizes), want)
