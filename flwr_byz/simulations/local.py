"""The ``local`` engine: the same experiment as on Flower's simulation engine, in one process.

``LocalGrid`` is a ``flwr.serverapp.Grid`` whose ``clients`` nodes are answered at once, one
after the other, by the real ClientApp handlers of ``flwr_byz.simulations.app`` (each node has
its own ``Context`` and ``context.state``); a handler that raises gives an error reply, as a
SuperNode would. The strategy, the Byzantine grid, the metering and the result file are those
of ``train_on_grid``, so the numbers equal the Ray engine's for the same seed; only Ray's
actors and the 10 ms message polling are gone (3-4x faster for gradient methods on 2 cores,
and no Ray start). Use it for quick runs and parameter sweeps; use the simulation engine to
exercise Flower's runtime. Tests give it node IDs and a ``handler`` of their own (a node that
forges, repeats or drops its replies).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from ..protocol.keys import (
    DATASET_KEY,
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    PARTITION_KEY,
    SEED_KEY,
)
from . import app as client_side
from . import runner  # its train_on_grid looked up at each run (tests wrap it)
from .config import ExperimentConfig
from .metering import discover_partitions
from .result import Result

__all__ = ["Handler", "LocalGrid", "Reply", "client_app", "ensure_task_identity", "run_local"]

#: Error code of a reply whose handler raised (Flower's ClientApp exception code).
CLIENT_EXCEPTION = 2


#: A node's answer to a message: one reply, several (a misbehaving node) or None (no reply:
#: the node dropped out).
Reply = Message | Sequence[Message] | None

#: How a node answers a message, given its ``Context``.
Handler = Callable[[Message, Context], Reply]


def client_app(msg: Message, context: Context) -> Message:
    """The real ClientApp's answer: ``train`` messages go to ``app.train``, the others to
    ``app.query`` (looked up at each call)."""
    handler = client_side.train if msg.metadata.message_type == "train" else client_side.query
    return handler(msg, context)


class LocalGrid(Grid):
    """In-process nodes answering through ``handler`` (default :func:`client_app`).

    ``nodes``: their number (IDs 1..n) or their IDs, in the order ``get_node_ids`` lists
    them; the i-th node has partition i (``partition-id`` in its ``node_config``). Each node
    keeps its ``Context`` (``contexts``) across messages, as a SuperNode does."""

    def __init__(self, nodes: int | Iterable[int], handler: Handler | None = None) -> None:
        ensure_task_identity()
        ids = list(range(1, nodes + 1)) if isinstance(nodes, int) else [int(n) for n in nodes]
        self.handler: Handler = client_app if handler is None else handler
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={PARTITION_ID_KEY: partition, NUM_PARTITIONS_KEY: len(ids)},
                state=RecordDict(),
                run_config={},
            )
            for partition, node in enumerate(ids)
        }
        self._stored: dict[str, list[Message]] = {}
        self._ids = itertools.count()
        self._run: Any = None

    # --- the Grid API ---------------------------------------------------------------------
    def set_run(self, run_id: Any) -> None:
        self._run = run_id

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            key = str(next(self._ids))
            self._stored[key] = self._answer(msg)
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [reply for k in message_ids for reply in self._stored.pop(k, [])]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # --- the nodes ------------------------------------------------------------------------
    def _answer(self, msg: Message) -> list[Message]:
        context = self.contexts.get(int(msg.metadata.dst_node_id))
        if context is None:
            return [Message(error=Error(CLIENT_EXCEPTION, "no such node"), reply_to=msg)]
        try:
            out = self.handler(msg, context)
        except Exception as exc:  # a SuperNode returns the exception as an error reply
            error = Error(CLIENT_EXCEPTION, f"{type(exc).__name__}: {exc}")
            return [Message(error=error, reply_to=msg)]
        return [] if out is None else [out] if isinstance(out, Message) else list(out)


def run_local(
    configs: Sequence[ExperimentConfig], on_round: runner.OnRound | None = None
) -> list[Result]:
    """Run ``configs`` (raw or prepared) one after the other on a ``LocalGrid`` each (see the
    module doc); each result is written to its config's ``out`` (when set) as soon as it is
    done."""
    prepared = [runner.prepare(c) for c in configs]  # as they are when prepared already
    results = []
    for cfg in prepared:
        grid = LocalGrid(cfg.clients)
        preload = {DATASET_KEY: cfg.dataset, PARTITION_KEY: cfg.partition, SEED_KEY: cfg.seed}
        partitions = discover_partitions(grid, preload)
        result = runner.train_on_grid(grid, cfg, on_round, partitions)
        if cfg.out:
            result.save(cfg.out)
        results.append(result)
    return results


def ensure_task_identity() -> None:
    """Give this process a Flower task identity unless it has one: Messages need it, and only
    the processes of a real run (ServerApp, ClientApp) are given one by Flower."""
    try:
        _ = TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id
    except RuntimeError:
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1
