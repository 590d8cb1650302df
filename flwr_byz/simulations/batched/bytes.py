"""Bytes per round on the batched engine: the sizes the round's Messages have on the local
engine (``metering.message_bytes``: their Flower protobuf serialisation), without building a
Message per client.

A method's Messages differ from node to node only in integers (node IDs, seeds, versions,
counts), strings and records of fixed sizes; an integer's size on the wire is the length of its
varint. So a Message's size is a function of its *signature*: its records' kinds, its config's
keys with the varint lengths of the integer values (the values themselves for strings), and the
node ID's length. :class:`WireSizes` builds one real Message per signature the first time it is
seen, measures it and remembers the size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from ...compressors import Compressor
from ...protocol.keys import (
    ATTACK_KEY,
    CONFIG_KEY,
    LABEL_FLIP,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    PAYLOAD_KEY,
    SERVER_ROUND_KEY,
    STATE_KEY,
    TRAIN_LOSS_KEY,
)
from ...protocol.records import Layout, payload_record, unflatten
from ..local import CLIENT_EXCEPTION
from ..metering import message_bytes

__all__ = ["Reply", "WireSizes", "reply_metrics"]

#: A reply's kind: a dense vector, a compressor payload, or an error (the ClientApp raised).
Reply = str

_STATE_KEY = "0" * 12  # the strategy's state key: 12 hex characters


def _varint(value: int) -> int:
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def _int_class(value: int) -> tuple[int, int]:
    """Wire lengths of an integer as sint64 (zigzag) and as uint64 (10: negative)."""
    zigzag = 2 * value if value >= 0 else -2 * value - 1
    return _varint(zigzag), _varint(value) if value >= 0 else 10


def _signature(values: Mapping[str, Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            out.append((key, value if isinstance(value, (str, bool)) else type(value).__name__))
        else:
            out.append((key, _int_class(value)))
    return tuple(out)


class WireSizes:
    """The sizes of a method's Messages (module doc).

    Parameters
    ----------
    layout : Layout
        The model's floating arrays (the records ``"model"`` and the dense replies).
    x0 : torch.Tensor
        A model vector (any values: only the sizes count).
    train_config : ConfigRecord
        What every train message carries for the ClientApp (``runner.train_config``).
    compressor : Compressor | None
        The payload replies' compressor.
    method : bool
        The messages of a method strategy (``MethodStrategy.messages`` adds the run's
        ``state-key``); False: Flower's FedAvg (the config and ``server-round`` only).
    """

    def __init__(
        self,
        layout: Layout,
        x0: torch.Tensor,
        train_config: ConfigRecord,
        compressor: Compressor | None = None,
        method: bool = True,
    ) -> None:
        self.method = method
        self.layout = layout
        self._model = unflatten(x0.detach().cpu(), layout)
        self.train_config = dict(train_config.items())
        self.compressor = compressor
        self._payload: ArrayRecord | None = None
        self._sizes: dict[tuple[Any, ...], int] = {}
        self.dtype = x0.dtype

    # --- records ---------------------------------------------------------------------------
    def _record(self, kind: str) -> ArrayRecord:
        if kind == "model":
            return self._model
        if kind == "payload":
            if self._payload is None:
                assert self.compressor is not None
                zero = torch.zeros(self.layout.numel, dtype=self.dtype)
                self._payload = payload_record(self.compressor.compress(zero, 0))
            return self._payload
        raise ValueError(f"unknown record kind {kind!r}")

    # --- messages --------------------------------------------------------------------------
    def _down_message(
        self, node: int, records: Mapping[str, str], config: Mapping[str, Any]
    ) -> Message:
        content = RecordDict(
            {
                **{k: self._record(kind) for k, kind in records.items()},
                CONFIG_KEY: ConfigRecord(dict(config)),
            }
        )
        return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)

    def _config(
        self,
        server_round: int,
        op: Mapping[str, Any],
        own: Mapping[str, Any],
        marked: bool | str,
    ) -> dict[str, Any]:
        """``MethodStrategy.messages``' ConfigRecord (+ the data attack's mark of ByzantineGrid:
        ``marked`` True for LabelFlip's, a string for a backdoor's spec)."""
        config = dict(self.train_config)
        config.update(op)
        config.update(own)
        if self.method:
            config[STATE_KEY] = _STATE_KEY
        config[SERVER_ROUND_KEY] = server_round
        if marked:
            config[ATTACK_KEY] = marked if isinstance(marked, str) else LABEL_FLIP
        return config

    def down(
        self,
        server_round: int,
        nodes: Sequence[int],
        records: Callable[[int], Mapping[str, str]] | Mapping[str, str],
        op: Mapping[str, Any],
        own: Callable[[int], Mapping[str, Any]],
        marked: Callable[[int], bool | str] = lambda node: False,
    ) -> int:
        """Bytes of the train Messages to ``nodes``: ``records`` (key -> ``"model"`` or
        ``"payload"``; per node or shared), the config ``op``, the node's ``own`` entries and
        its data attack's mark (``marked``: False, True for LabelFlip's, a backdoor's spec)."""
        total = 0
        shared = _signature(self._config(server_round, op, {}, False))  # the same for all
        fixed = set(self.train_config) | set(op)
        for node in nodes:
            recs = records(node) if callable(records) else records
            entries, mark = own(node), marked(node)
            key: tuple[Any, ...]
            if fixed.isdisjoint(entries):
                key = ("down", tuple(recs.items()), shared, _signature(entries), mark)
            else:  # the node's entries replace shared ones
                key = (
                    "down",
                    tuple(recs.items()),
                    _signature(self._config(server_round, op, entries, mark)),
                )
            key += (_int_class(node),)
            size = self._sizes.get(key)
            if size is None:
                config = self._config(server_round, op, entries, mark)
                size = self._sizes[key] = message_bytes(self._down_message(node, recs, config))
            total += size
        return total

    def up(
        self,
        nodes: Sequence[int],
        kinds: Sequence[Reply],
        metrics: Sequence[Mapping[str, Any]],
    ) -> int:
        """Bytes of the replies of ``nodes``: ``kinds[i]`` is the key of the reply's record
        (``VECTOR_KEY`` or ``POINT_KEY``: a dense vector or model; ``PAYLOAD_KEY``) or
        ``"error"``; ``metrics[i]`` the reply's MetricRecord (usually ``train-loss`` and
        ``num-examples``)."""
        total = 0
        for node, kind, values in zip(nodes, kinds, metrics, strict=True):
            key = ("up", kind, _signature(values), _int_class(node))
            size = self._sizes.get(key)
            if size is None:
                size = self._sizes[key] = message_bytes(self._reply(node, kind, values))
            total += size
        return total

    def _reply(self, node: int, kind: Reply, values: Mapping[str, Any]) -> Message:
        sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
        if kind == "error":
            reason = "ValueError: GradientClient: the node has no local data"
            return Message(error=Error(CLIENT_EXCEPTION, reason), reply_to=sent)
        record = self._record("payload" if kind == PAYLOAD_KEY else "model")
        content = RecordDict({kind: record, METRICS_KEY: MetricRecord(dict(values))})
        return Message(content=content, reply_to=sent)


def reply_metrics(loss: float, size: int) -> dict[str, Any]:
    """A GradientClient reply's MetricRecord: ``train-loss`` and ``num-examples``."""
    return {TRAIN_LOSS_KEY: loss, NUM_EXAMPLES_KEY: size}
