"""RunGrid metering and ordering, ``wait_for_nodes`` and ``discover_partitions`` on the
library's in-process LocalGrid."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.serde import message_to_proto

from flwr_byz.clients.wrapping import GridWrapper
from flwr_byz.simulations.local import LocalGrid
from flwr_byz.simulations.metering import (
    RunGrid,
    discover_partitions,
    message_bytes,
    wait_for_nodes,
)

from ..clients.nodes import LoggedGrid, capture_flwr_log, model, train_reply, warnings_of


def _wire_size(message: Message) -> int:
    """Bytes of the Message's protobuf serialisation, computed here independently."""
    return len(message_to_proto(message).SerializeToString())


def _floats(n: int) -> ArrayRecord:
    return ArrayRecord({"x": Array(np.arange(n, dtype=np.float32))})


def _instruction(node: int, n: int = 10) -> Message:
    content = RecordDict({"arrays": _floats(n), "config": ConfigRecord({"lr": 0.1})})
    return Message(content, node, MessageType.TRAIN, group_id="1")


def _sized_client(msg: Message, context: Context | None = None) -> Message:
    """Replies a node-dependent number of floats, so every reply has its own size."""
    node = int(msg.metadata.dst_node_id)
    return train_reply(msg, _floats(node % 50 + 1), num_examples=node)


class ReversingGrid(LocalGrid):
    """A LocalGrid that hands replies back in reverse order of the messages."""

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return list(reversed(list(super().pull_messages(message_ids))))


class CountingGrid(LoggedGrid):
    """A LoggedGrid recording the number of messages of every ``send_and_receive`` call."""

    def __init__(self, node_ids: Iterable[int], client: Any) -> None:
        super().__init__(node_ids, client)
        self.batches: list[int] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        self.batches.append(len(messages))
        return super().send_and_receive(messages, timeout=timeout)


class GrowingGrid(LocalGrid):
    """Node count 1, 2, ... up to ``final``, one more every ``step`` seconds."""

    def __init__(self, final: int, step: float) -> None:
        super().__init__(range(final), lambda msg, context: None)
        self.final, self.step, self.start = final, step, time.monotonic()

    def get_node_ids(self) -> Iterable[int]:
        count = min(self.final, 1 + int((time.monotonic() - self.start) / self.step))
        return list(super().get_node_ids())[:count]


class IdStampingGrid(LoggedGrid):
    """A LoggedGrid that, like Flower's Grids, gives every pushed Message its ID."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"{i:036d}"
        return super().push_messages(messages)


# --- message_bytes -------------------------------------------------------------------------


def test_message_bytes_is_the_protobuf_size() -> None:
    ins = _instruction(7, n=123)
    reply = train_reply(ins, model(), num_examples=5)
    error = Message(Error(code=3, reason="client failed"), reply_to=ins)
    for msg in (ins, reply, error):
        assert message_bytes(msg) == _wire_size(msg) > 0
    assert message_bytes(reply) != message_bytes(ins)


def test_message_bytes_grows_4_bytes_per_float32() -> None:
    small, large = _instruction(1, n=1_000), _instruction(1, n=11_000)
    assert 40_000 <= message_bytes(large) - message_bytes(small) <= 40_100


# --- RunGrid: order ------------------------------------------------------------------------


def _node_ids(n: int, seed: int = 0) -> list[int]:
    """``n`` distinct random 63-bit node IDs."""
    return random.Random(seed).sample(range(1, 1 << 63), n)


def test_get_node_ids_in_partition_order() -> None:
    nodes = _node_ids(12)
    partitions = {node: pid for pid, node in enumerate(nodes[:9])}  # nodes 9..11 unknown
    shuffled = nodes[:]
    random.Random(1).shuffle(shuffled)
    grid = RunGrid(LocalGrid(shuffled, _sized_client), partitions)
    assert list(grid.get_node_ids()) == nodes[:9] + sorted(nodes[9:])
    assert list(RunGrid(LocalGrid(shuffled, _sized_client)).get_node_ids()) == sorted(nodes)


def test_partitions_map_is_copied() -> None:
    nodes = _node_ids(3)
    partitions = {nodes[0]: 2, nodes[1]: 1, nodes[2]: 0}
    grid = RunGrid(LocalGrid(nodes, _sized_client), partitions)
    partitions[nodes[0]] = -1
    assert list(grid.get_node_ids()) == nodes[::-1]


def test_replies_in_partition_order() -> None:
    nodes = _node_ids(10)
    partitions = {node: pid for pid, node in enumerate(nodes[:8])}
    fake = ReversingGrid(nodes, _sized_client)
    grid = RunGrid(fake, partitions)
    order = nodes[:]
    random.Random(2).shuffle(order)
    expected = nodes[:8] + sorted(nodes[8:])

    replies = list(grid.send_and_receive([_instruction(n) for n in order]))
    assert [int(r.metadata.src_node_id) for r in replies] == expected

    ids = grid.push_messages([_instruction(n) for n in order])
    replies = list(grid.pull_messages(ids))
    assert [int(r.metadata.src_node_id) for r in replies] == expected


# --- RunGrid: bytes ------------------------------------------------------------------------


def test_byte_counters_send_and_receive() -> None:
    nodes = _node_ids(6)
    fake = LoggedGrid(nodes, _sized_client)
    grid = RunGrid(fake, {n: i for i, n in enumerate(nodes)})
    messages = [_instruction(n, n=10 * (i + 1)) for i, n in enumerate(nodes)]
    replies = list(grid.send_and_receive(messages))
    assert len(fake.sent) == 6 and len(replies) == 6
    down = sum(_wire_size(m) for m in fake.sent)
    up = sum(_wire_size(r) for r in replies)
    assert (grid.bytes_up, grid.bytes_down) == (up, down)
    assert up != down
    assert grid.take_bytes() == (up, down)
    assert (grid.bytes_up, grid.bytes_down) == (0, 0)
    assert grid.take_bytes() == (0, 0)


def test_byte_counters_push_pull_accumulate() -> None:
    nodes = _node_ids(4)
    fake = LoggedGrid(nodes, _sized_client)
    grid = RunGrid(fake)
    ids = list(grid.push_messages([_instruction(n, n=20) for n in nodes[:2]]))
    down = sum(_wire_size(m) for m in fake.sent)
    assert (grid.bytes_up, grid.bytes_down) == (0, down)
    replies = list(grid.pull_messages(ids))
    up = sum(_wire_size(r) for r in replies)
    assert (grid.bytes_up, grid.bytes_down) == (up, down)

    more = list(grid.send_and_receive([_instruction(n, n=30) for n in nodes[2:]]))
    assert len(fake.sent) == 4
    total_up = up + sum(_wire_size(r) for r in more)
    total_down = down + sum(_wire_size(m) for m in fake.sent[2:])
    assert grid.take_bytes() == (total_up, total_down)
    assert grid.take_bytes() == (0, 0)


def test_byte_counters_count_error_replies_and_missing_replies() -> None:
    nodes = _node_ids(3)

    def client(msg: Message, context: Context) -> Message | None:
        node = int(msg.metadata.dst_node_id)
        if node == nodes[0]:
            return None
        if node == nodes[1]:
            return Message(Error(code=1, reason="boom"), reply_to=msg)
        return _sized_client(msg)

    fake = LoggedGrid(nodes, client)
    grid = RunGrid(fake)
    replies = list(grid.send_and_receive([_instruction(n) for n in nodes]))
    assert len(replies) == 2
    assert grid.take_bytes() == (
        sum(_wire_size(r) for r in replies),
        sum(_wire_size(m) for m in fake.sent),
    )


def test_bytes_down_counts_the_messages_as_sent() -> None:
    nodes = _node_ids(3)
    fake = IdStampingGrid(nodes, _sized_client)
    grid = RunGrid(fake)
    grid.send_and_receive([_instruction(n) for n in nodes])
    assert grid.bytes_down == sum(_wire_size(m) for m in fake.sent)


# --- GridWrapper delegation ----------------------------------------------------------------


def test_wrappers_delegate() -> None:
    nodes = _node_ids(4)
    fake = LocalGrid(nodes, _sized_client)
    for grid in (GridWrapper(fake), RunGrid(fake), RunGrid(GridWrapper(fake))):
        run = object()
        grid.set_run(run)
        assert fake.run is run and grid.run is run
        msg = grid.create_message(
            RecordDict({"config": ConfigRecord({"a": 1})}), MessageType.QUERY, nodes[1], "g", 5.0
        )
        assert int(msg.metadata.dst_node_id) == nodes[1]
        assert msg.metadata.message_type == MessageType.QUERY
        assert msg.metadata.group_id == "g" and msg.metadata.ttl == 5.0
        assert msg.content["config"]["a"] == 1
        assert [int(n.node_id) for n in grid.get_nodes()] == [int(n) for n in nodes]


# --- discover_partitions -------------------------------------------------------------------


def _partition_client(partitions: dict[int, int], seen: list[dict[str, Any]]) -> Any:
    """A ClientApp answering the partition query from ``partitions`` (config kept in
    ``seen``)."""

    def client(msg: Message, context: Context) -> Message:
        assert msg.metadata.message_type == MessageType.QUERY
        seen.append(dict(msg.content["config"]))
        pid = partitions[int(msg.metadata.dst_node_id)]
        content = RecordDict({"partition": MetricRecord({"partition-id": pid})})
        return Message(content, reply_to=msg)

    return client


def test_discover_partitions_in_batches() -> None:
    nodes = _node_ids(250, seed=5)
    pids = list(range(250))
    random.Random(6).shuffle(pids)
    partitions = dict(zip(nodes, pids, strict=True))
    seen: list[dict[str, Any]] = []
    fake = CountingGrid(nodes, _partition_client(partitions, seen))
    preload = {"dataset": "digits", "partition": "dirichlet:0.5", "seed": 3}

    mapping = discover_partitions(fake, preload=preload, timeout=5.0)
    assert mapping == partitions
    assert sorted(fake.batches) == [50, 100, 100] and max(fake.batches) <= 100
    assert sorted(int(m.metadata.dst_node_id) for m in fake.sent) == sorted(nodes)
    assert len(seen) == 250
    assert all(c == {"op": "partition-id", **preload} for c in seen)

    grid = RunGrid(fake, mapping)
    ordered = list(grid.get_node_ids())
    assert [partitions[n] for n in ordered] == list(range(250))


def test_discover_partitions_without_preload() -> None:
    nodes = _node_ids(3)
    seen: list[dict[str, Any]] = []
    partitions = {n: i for i, n in enumerate(nodes)}
    fake = CountingGrid(nodes, _partition_client(partitions, seen))
    assert discover_partitions(fake) == partitions
    assert seen == [{"op": "partition-id"}] * 3 and fake.batches == [3]


def _faulty_setup(nodes: list[int]) -> LocalGrid:
    """nodes[0] errs, nodes[1] never answers, nodes[2] replies without the metric."""
    partitions = {n: i for i, n in enumerate(nodes)}
    good = _partition_client(partitions, [])

    def client(msg: Message, context: Context) -> Message | None:
        node = int(msg.metadata.dst_node_id)
        if node == nodes[0]:
            return Message(Error(code=2, reason="no handler"), reply_to=msg)
        if node == nodes[1]:
            return None
        if node == nodes[2]:
            return Message(RecordDict({"metrics": MetricRecord({"x": 1})}), reply_to=msg)
        return good(msg, context)

    return LocalGrid(nodes, client)


def test_discover_partitions_skips_failed_nodes(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_flwr_log(caplog, monkeypatch)
    nodes = _node_ids(6, seed=9)
    mapping = discover_partitions(_faulty_setup(nodes))
    assert mapping == {n: i for i, n in enumerate(nodes) if i >= 3}
    warnings = warnings_of(caplog)
    for node in (nodes[0], nodes[2]):
        assert any(str(node) in w for w in warnings), node
    assert any("3 of 6" in w for w in warnings)


def test_discover_partitions_names_silent_nodes(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_flwr_log(caplog, monkeypatch)
    nodes = _node_ids(6, seed=9)
    discover_partitions(_faulty_setup(nodes))
    assert any(str(nodes[1]) in w for w in warnings_of(caplog))


def test_discover_partitions_no_warning_when_all_answer(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_flwr_log(caplog, monkeypatch)
    nodes = _node_ids(5)
    partitions = {n: i for i, n in enumerate(nodes)}
    assert discover_partitions(LocalGrid(nodes, _partition_client(partitions, []))) == partitions
    assert warnings_of(caplog) == []


# --- wait_for_nodes ------------------------------------------------------------------------


def test_wait_for_nodes_expected() -> None:
    grid = GrowingGrid(final=4, step=0.05)
    start = time.monotonic()
    assert wait_for_nodes(grid, expected=3, timeout=5.0) == 3
    assert time.monotonic() - start < 0.9  # did not wait for stability
    assert wait_for_nodes(LocalGrid(_node_ids(5), _sized_client), expected=3, timeout=0.5) == 5


def test_wait_for_nodes_until_stable() -> None:
    grid = GrowingGrid(final=3, step=0.1)
    start = time.monotonic()
    assert wait_for_nodes(grid, timeout=5.0) == 3
    elapsed = time.monotonic() - start
    assert 1.2 <= elapsed < 3.0  # grew for 0.2 s, then stable for 1 s


def test_wait_for_nodes_timeout() -> None:
    with pytest.raises(TimeoutError, match=r"^2 nodes .* need 5$"):
        wait_for_nodes(LocalGrid(_node_ids(2), _sized_client), expected=5, timeout=0.1)
    with pytest.raises(TimeoutError, match=r"^0 nodes"):
        wait_for_nodes(LocalGrid([], _sized_client), timeout=0.1)
