"""Nodes, models and replies for the tests that drive strategies and grids in process.

The grid is the library's own :class:`flwr_byz.simulations.local.LocalGrid`: its nodes answer
through a handler ``handler(msg, context)`` given here (a reply, several replies, or None for
no reply), each with its own ``Context``. ``LoggedGrid`` also keeps every message pushed to it;
``ShuffledGrid`` is a federation of random node IDs answering with the real ClientApp handlers
in a random order, as in a simulation. Helpers build models, honest updates and replies.
Importing this module sets the process's Flower task identity (needed to create Messages
outside a running app).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from flwr_byz.simulations.local import Handler, LocalGrid, ensure_task_identity

ensure_task_identity()


class LoggedGrid(LocalGrid):
    """A ``LocalGrid`` that keeps every message pushed to it, in order (``sent``)."""

    def __init__(self, nodes: int | Iterable[int], handler: Handler | None = None) -> None:
        super().__init__(nodes, handler)
        self.sent: list[Message] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.sent += messages
        return super().push_messages(messages)


class ShuffledGrid(LoggedGrid):
    """``num_nodes`` nodes with random IDs (from ``id_seed``) answering with the real ClientApp
    handlers; the Grid lists them, and their replies arrive, in a seeded random order, as from
    real nodes. Keeps the replies (``replies``) and each node's partition (``partition_of``)."""

    def __init__(self, num_nodes: int, id_seed: int) -> None:
        ids = random.Random(id_seed).sample(range(1, 1 << 40), num_nodes)
        super().__init__(ids)
        self.partition_of = {node: p for p, node in enumerate(ids)}
        self.listed = list(ids)
        random.Random(id_seed + 1).shuffle(self.listed)
        self.arrival = random.Random(id_seed + 2)
        self.replies: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.listed)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        self.replies += replies
        self.arrival.shuffle(replies)
        return replies


# --- models, updates, replies -------------------------------------------------------------


def model(dtype: str = "float32", seed: int = 0, with_int: bool = False) -> ArrayRecord:
    """A small model: a [3, 4] weight, a [4] bias, a [2, 2, 2] kernel (and an int64 counter)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "w": rng.normal(size=(3, 4)).astype(dtype),
        "b": rng.normal(size=4).astype(dtype),
        "k": rng.normal(size=(2, 2, 2)).astype(dtype),
    }
    if with_int:
        arrays["count"] = np.array([5], dtype=np.int64)
    return ArrayRecord({k: Array(np.array(v)) for k, v in arrays.items()})


def numpy_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays of ``record`` by key."""
    return {k: record[k].numpy() for k in record}


def vector_of(record: ArrayRecord, keys: Sequence[str] | None = None) -> np.ndarray:
    """The float64 concatenation of ``record``'s arrays (in ``keys`` order, default its own)."""
    keys = list(record.keys()) if keys is None else list(keys)
    return np.concatenate([record[k].numpy().astype(np.float64).ravel() for k in keys])


def shifted(record: ArrayRecord, delta: dict[str, np.ndarray]) -> ArrayRecord:
    """``record + delta`` per key, each array keeping its dtype."""
    out = {}
    for key in record:
        arr = record[key].numpy()
        out[key] = Array(np.array(arr + delta.get(key, 0), dtype=arr.dtype))
    return ArrayRecord(out)


def update_for(record: ArrayRecord, node: int, scale: float = 0.1) -> dict[str, np.ndarray]:
    """A deterministic per-node update for every float array of ``record``."""
    rng = np.random.default_rng(1000 + node)
    out = {}
    for key in record:
        arr = record[key].numpy()
        if np.issubdtype(arr.dtype, np.floating):
            out[key] = (scale * rng.normal(size=arr.shape)).astype(arr.dtype)
    return out


def train_reply(
    ins: Message,
    arrays: ArrayRecord,
    num_examples: float | None = 10,
    metrics: dict[str, Any] | None = None,
    array_key: str = "arrays",
) -> Message:
    """A train reply holding ``arrays`` and a MetricRecord (``num-examples`` unless None)."""
    values: dict[str, Any] = {"train_loss": 1.0}
    if num_examples is not None:
        values["num-examples"] = num_examples
    values.update(metrics or {})
    content = RecordDict({array_key: arrays, "metrics": MetricRecord(values)})
    return Message(content, reply_to=ins)


def sent_arrays(ins: Message, key: str = "arrays") -> ArrayRecord:
    """The ArrayRecord an instruction carries."""
    record = ins.content[key]
    assert isinstance(record, ArrayRecord)
    return record


def honest_client(
    scale: float = 0.1, num_examples: Callable[[int], float] | None = None
) -> Callable[[Message, Context], Message]:
    """A FedAvg-style node handler: train replies ``sent + update_for(node)``, evaluate
    replies a loss; ``num_examples(node)`` its sample count (default 10)."""

    def client(ins: Message, context: Context) -> Message:
        node = int(ins.metadata.dst_node_id)
        count = 10 if num_examples is None else num_examples(node)
        if ins.metadata.message_type.startswith("evaluate"):
            metrics = MetricRecord({"eval_loss": float(node), "num-examples": count})
            return Message(RecordDict({"metrics": metrics}), reply_to=ins)
        sent = sent_arrays(ins)
        return train_reply(ins, shifted(sent, update_for(sent, node, scale)), count)

    return client


def stack(records: Sequence[ArrayRecord], keys: Sequence[str]) -> torch.Tensor:
    """``[n, d]`` float64 tensor of the records' arrays (in ``keys`` order)."""
    return torch.from_numpy(np.stack([vector_of(r, keys) for r in records]))


# --- logging ------------------------------------------------------------------------------


def capture_flwr_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """Make ``caplog`` see Flower's logger ("flwr"): propagation forced on (Flower's
    simulation switches it off in this process), every level recorded."""
    monkeypatch.setattr(logging.getLogger("flwr"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="flwr")
    return caplog


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING (and above) messages recorded from Flower's logger."""
    return [
        r.getMessage() for r in caplog.records if r.name == "flwr" and r.levelno >= logging.WARNING
    ]
