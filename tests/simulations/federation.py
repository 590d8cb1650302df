"""An in-process federation for the runner's tests: a FakeGrid whose nodes answer with the
real ClientApp handlers of ``flwr_byz.simulations.app`` (random node IDs, shuffled arrival)."""

from __future__ import annotations

import random
from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict

from flwr_byz.simulations import app as client_side

from ..clients.fake_grid import FakeGrid

__all__ = ["Federation"]


class Federation(FakeGrid):
    """``num_nodes`` nodes with random IDs, answering through the real ClientApp handlers."""

    def __init__(self, num_nodes: int, id_seed: int) -> None:
        ids = random.Random(id_seed).sample(range(1, 1 << 40), num_nodes)
        self.partition_of = {node: p for p, node in enumerate(ids)}
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": p, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for node, p in self.partition_of.items()
        }
        self.replies: list[Message] = []
        self.arrival = random.Random(id_seed + 2)
        shuffled = list(ids)
        random.Random(id_seed + 1).shuffle(shuffled)  # the order the Grid lists them in
        super().__init__(shuffled, self._answer)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies arrive in an arbitrary (seeded) order, as from real nodes."""
        replies = list(super().pull_messages(message_ids))
        self.arrival.shuffle(replies)
        return replies

    def _answer(self, msg: Message) -> Message:
        context = self.contexts[msg.metadata.dst_node_id]
        kind = msg.metadata.message_type
        handler = client_side.train if kind == "train" else client_side.query
        reply = handler(msg, context)
        self.replies.append(reply)
        return reply
