"""RunGrid: the runner's Grid wrapper that makes a simulation measurable and reproducible.

- **Bytes.** Every Message that goes out and every reply that comes back is measured as the
  size of its Flower protobuf serialisation (``flwr.common.serde.message_to_proto``), the form
  it takes on the wire in a deployment.
- **Order.** Simulation node IDs are random per run. Once ``discover_partitions`` has asked
  each node for its ``partition-id``, node IDs are listed in partition order and replies are
  returned in partition order, so a seeded ``random`` samples the same partitions and the
  aggregation sees the same order in every run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid
from flwr.supercore import log
from flwr.superlink.grid import HttpGrid

from ..clients.wrapping import GridWrapper
from ..protocol.keys import (
    CONFIG_KEY,
    OP_KEY,
    PARTITION_ID_KEY,
    PARTITION_QUERY,
    PARTITION_RECORD_KEY,
    UNMETERED_KEYS,
)

__all__ = [
    "PARTITION_QUERY",
    "RunGrid",
    "discover_partitions",
    "message_bytes",
    "send_and_receive",
    "wait_for_nodes",
]

_QUERY_BATCH = 100

#: Seconds between two pulls of a round's replies from a SuperLink. Flower's own
#: ``send_and_receive`` of a SuperLink's grid pulls every 3 s, so every round of a deployment
#: (or of ``flwr run``) lasted a multiple of 3 s however fast the nodes answered.
PULL_INTERVAL = 0.1


def send_and_receive(
    grid: Grid, messages: Iterable[Message], *, timeout: float | None = None
) -> list[Message]:
    """``grid.send_and_receive(messages, timeout=timeout)``, for a grid that talks to a
    SuperLink (Flower's ``HttpGrid``) pulling the replies every ``PULL_INTERVAL`` seconds
    instead of every 3 s; other grids (in-memory, local) answer as they do."""
    if not isinstance(grid, HttpGrid):
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    end = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        pulled = list(grid.pull_messages(pending))
        replies += pulled
        pending -= {m.metadata.reply_to_message_id for m in pulled}
        if not pending or (end is not None and time.monotonic() >= end):
            break
        time.sleep(PULL_INTERVAL)
    return replies


def message_bytes(message: Message) -> int:
    """Size in bytes of the Message's protobuf serialisation, without the runner's
    bookkeeping entries (``UNMETERED_KEYS``: the client-state folder, the resumed round)."""
    proto = message_to_proto(message)
    for item in proto.content.items:
        if item.HasField("config_record"):
            entries = item.config_record.items
            for i in reversed(range(len(entries))):
                if entries[i].key in UNMETERED_KEYS:
                    del entries[i]
    return int(proto.ByteSize())


class RunGrid(GridWrapper):
    """Meter bytes and order nodes/replies by partition (see module doc).

    ``bytes_up`` / ``bytes_down`` accumulate until ``take_bytes()`` returns and resets them.
    """

    def __init__(self, grid: Grid, partitions: dict[int, int] | None = None) -> None:
        super().__init__(grid)
        self.partitions = dict(partitions or {})
        self.bytes_up = 0
        self.bytes_down = 0

    def take_bytes(self) -> tuple[int, int]:
        """(bytes up, bytes down) since the last call."""
        up, down = self.bytes_up, self.bytes_down
        self.bytes_up = self.bytes_down = 0
        return up, down

    def _rank(self, node_id: int) -> tuple[int, int]:
        return (self.partitions.get(int(node_id), 1 << 62), int(node_id))

    def get_node_ids(self) -> Iterable[int]:
        """The federation's node IDs in partition order (nodes with no known partition last,
        by ID): the connected ones and every node that reported a partition, so a node that
        went offline is still sampled (and counted missing when it does not answer) instead of
        a strategy waiting for it, and the sampling does not depend on who is online."""
        nodes = {int(n) for n in self.grid.get_node_ids()} | set(self.partitions)
        return sorted(nodes, key=self._rank)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = self.grid.push_messages(messages)
        self.bytes_down += sum(message_bytes(m) for m in messages)  # with their message IDs
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._received(self.grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies = send_and_receive(self.grid, messages, timeout=timeout)
        self.bytes_down += sum(message_bytes(m) for m in messages)  # with their message IDs
        return self._received(replies)

    def _received(self, replies: Iterable[Message]) -> list[Message]:
        replies = sorted(replies, key=lambda m: self._rank(m.metadata.src_node_id))
        self.bytes_up += sum(message_bytes(m) for m in replies)
        return replies


def wait_for_nodes(grid: Grid, expected: int | None = None, timeout: float = 120.0) -> int:
    """Wait until ``expected`` nodes are connected (or, when None, until at least one is and
    the count has not changed for a second); returns the count. Raises ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    last, stable_since = -1, time.monotonic()
    while True:
        count = len(list(grid.get_node_ids()))
        now = time.monotonic()
        if count != last:
            last, stable_since = count, now
        if (expected is not None and count >= expected) or (
            expected is None and count > 0 and now - stable_since >= 1.0
        ):
            return count
        if now > deadline:
            raise TimeoutError(f"{count} nodes connected after {timeout:.0f} s, need {expected}")
        time.sleep(0.05)


def discover_partitions(
    grid: Grid, preload: dict[str, Any] | None = None, timeout: float = 600.0
) -> dict[int, int]:
    """Ask every connected node for its ``partition-id`` (a ``query`` message with
    ``op = "partition-id"``, answered by the runner's ClientApp); node ID -> partition ID.
    ``preload`` (``dataset``, ``partition``, ``seed``) lets the nodes load their data while
    answering, so the first round's time is not the data loading.

    Nodes are asked in batches (Flower's in-memory LinkState scans every stored message for
    each node it serves). Nodes that do not answer are left out, with a warning.
    """
    nodes = sorted(int(n) for n in grid.get_node_ids())
    mapping: dict[int, int] = {}
    for start in range(0, len(nodes), _QUERY_BATCH):
        batch = nodes[start : start + _QUERY_BATCH]
        query = ConfigRecord({OP_KEY: PARTITION_QUERY, **(preload or {})})
        content = RecordDict({CONFIG_KEY: query})
        messages = [
            Message(content, dst_node_id=node, message_type=MessageType.QUERY) for node in batch
        ]
        for reply in send_and_receive(grid, messages, timeout=timeout):
            node = int(reply.metadata.src_node_id)
            try:
                value = reply.content.metric_records[PARTITION_RECORD_KEY][PARTITION_ID_KEY]
                mapping[node] = int(value)  # type: ignore[arg-type]
            except Exception as exc:  # error reply or a ClientApp without the query handler
                log(WARNING, "node %d did not report its partition-id: %s", node, exc)
    missing = [n for n in nodes if n not in mapping]
    if missing:
        log(
            WARNING,
            "%d of %d nodes did not report a partition-id: %s%s",
            len(missing),
            len(nodes),
            ", ".join(str(n) for n in missing[:10]),
            " ..." if len(missing) > 10 else "",
        )
    return mapping
