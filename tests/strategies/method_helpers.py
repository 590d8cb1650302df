"""Shared pieces of the method-strategy tests (ByzVRMarinaPP, RobustMomentum, updates).

A softmax-regression problem (``nn.Linear(features, classes)``, cross-entropy) whose nodes are
answered by :class:`flwr_byz.clients.GradientClient` on the library's ``LocalGrid``, with one
Context per node kept across rounds (worker momentum persists, as on a SuperNode). ``Network``
records every instruction and reply per round and can tamper with a reply on its way back. The
brute-force side (``model_grad``, ``minibatch``, ``clip_reference``) is plain torch written
from the algorithm text, in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from torch import nn

from flwr_byz.clients import GradientClient
from flwr_byz.simulations.local import LocalGrid

FEATURES = 5
CLASSES = 3

#: tamper(server_round, instruction, honest reply) -> what the node sends instead
Tamper = Callable[[int, Message, Message], Message | list[Message] | None]


def initial_arrays(seed: int = 0, features: int = FEATURES, classes: int = CLASSES) -> ArrayRecord:
    """x^0: a seeded ``nn.Linear(features, classes)`` (keys ``weight``, ``bias``)."""
    torch.manual_seed(seed)
    return ArrayRecord(nn.Linear(features, classes).state_dict())


def local_data(
    node: int, size: int, features: int = FEATURES, classes: int = CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Node ``node``'s ``size`` samples: Gaussian features (a per-node shift), random labels."""
    gen = torch.Generator().manual_seed(7919 * node + 13)
    x = torch.randn(size, features, generator=gen) + 0.3 * (node % 4)
    y = torch.randint(0, classes, (size,), generator=gen)
    return x, y


def vec(record: ArrayRecord) -> torch.Tensor:
    """float64 concatenation of the record's arrays, in record order."""
    return torch.cat(
        [
            torch.from_numpy(np.array(record[k].numpy(), dtype=np.float64)).reshape(-1)
            for k in record
        ]
    )


def config_of(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records["config"])


def minibatch(n: int, size: int, seed: int) -> torch.Tensor:
    """The documented minibatch of GradientClient: ``size`` of ``n`` samples without
    replacement, ``randperm`` of a generator seeded with ``seed`` (0 or >= n: all, in order)."""
    if size <= 0 or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


def model_grad(
    point: torch.Tensor, x: torch.Tensor, y: torch.Tensor, classes: int = CLASSES
) -> torch.Tensor:
    """Gradient of the mean cross-entropy of ``x @ W.T + b`` at the flat ``point = [W, b]``
    (float64, autograd on the formula, no nn.Module)."""
    features = x.shape[1]
    theta = point.detach().to(torch.float64).clone().requires_grad_(True)
    w = theta[: classes * features].reshape(classes, features)
    b = theta[classes * features :]
    loss = F.cross_entropy(x.to(torch.float64) @ w.T + b, y)
    (grad,) = torch.autograd.grad(loss, theta)
    return grad


def clip_reference(rows: torch.Tensor, level: float | None) -> tuple[torch.Tensor, int]:
    """``y min(1, level / ||y||)`` row by row (a Python loop); the count of rows longer than
    ``level``. ``level=None``: unchanged, 0."""
    if level is None:
        return rows.clone(), 0
    out, count = [], 0
    for row in rows:
        norm = float(torch.sqrt((row.double() ** 2).sum()))
        if norm > level:
            out.append(row * (level / norm))
            count += 1
        else:
            out.append(row.clone())
    return (torch.stack(out) if out else rows.clone()), count


def stranger(ins: Message, reply: Message, node: int = 999) -> Message:
    """A copy of ``reply`` that claims to come from ``node`` (the round was not sent to it)."""
    fake = Message(ins.content, node, ins.metadata.message_type)
    return Message(reply.content, reply_to=fake)


def replace_arrays(
    reply: Message, change: Callable[[str, str, np.ndarray], np.ndarray], ins: Message
) -> Message:
    """``reply`` with every array ``(record, key, value)`` of its ArrayRecords replaced by
    ``change(record, key, value)`` (its MetricRecords kept)."""
    content: dict[str, Any] = {}
    for name, record in reply.content.array_records.items():
        content[name] = ArrayRecord(
            {k: Array(np.ascontiguousarray(change(name, k, record[k].numpy()))) for k in record}
        )
    for name, metrics in reply.content.metric_records.items():
        content[name] = MetricRecord(dict(metrics))
    return Message(RecordDict(content), reply_to=ins)


@dataclass
class Exchange:
    """One instruction, the honest reply GradientClient computed, what was sent back."""

    ins: Message
    honest: Message
    sent: list[Message]


class RecordingGrid(LocalGrid):
    """A LocalGrid that groups the exchanges by ``send_and_receive`` call (one per train
    round; the method strategies send no evaluate messages)."""

    def __init__(self, node_ids: Sequence[int], network: Network) -> None:
        super().__init__(node_ids, network.answer)
        self.network = network

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if not messages:
            return []
        self.network.rounds.append([])
        return list(super().send_and_receive(messages, timeout=timeout))


@dataclass
class Network:
    """Nodes answered by one GradientClient, a persistent Context each (``contexts``: the
    grid's), local data of ``sizes[node]`` samples (default ``size``), an optional
    ``tamper``."""

    nodes: Sequence[int]
    size: int = 20
    sizes: dict[int, int] = field(default_factory=dict)
    features: int = FEATURES
    classes: int = CLASSES
    tamper: Tamper | None = None
    rounds: list[list[Exchange]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = {
            n: local_data(n, self.sizes.get(n, self.size), self.features, self.classes)
            for n in self.nodes
        }
        self.client = GradientClient(
            model_fn=lambda config: nn.Linear(self.features, self.classes),
            loss_fn=lambda model, x, y: F.cross_entropy(model(x), y),
            data_fn=lambda context, config: self.data[int(context.node_id)],
        )
        self.grid = RecordingGrid(self.nodes, self)
        self.contexts = self.grid.contexts  # a test may replace a node's Context (state lost)

    def answer(self, ins: Message, context: Context) -> list[Message]:
        honest = self.client.handle(ins, context)
        out: Message | list[Message] | None = honest
        if self.tamper is not None:
            out = self.tamper(len(self.rounds), ins, honest)
        sent = [] if out is None else [out] if isinstance(out, Message) else list(out)
        self.rounds[-1].append(Exchange(ins, honest, sent))
        return sent


def network64(nodes: list[int], **kwargs: Any) -> Network:
    """A ``Network`` whose clients compute in float64 (model, loss, replies)."""
    net = Network(nodes, **kwargs)
    net.client = GradientClient(
        model_fn=lambda config: nn.Linear(FEATURES, CLASSES).double(),
        loss_fn=lambda model, x, y: F.cross_entropy(model(x.double()), y),
        data_fn=lambda context, config: net.data[int(context.node_id)],
    )
    return net


def initial64(seed: int = 0) -> ArrayRecord:
    """x^0 of the float64 problem (``network64``)."""
    torch.manual_seed(seed)
    return ArrayRecord(nn.Linear(FEATURES, CLASSES).double().state_dict())


@dataclass
class Run:
    """What ``strategy.start`` produced, round by round (index 0 = round 1)."""

    arrays: list[torch.Tensor]  # the round's returned model, flat float64
    state: list[dict[str, torch.Tensor | None]]  # strategy attributes after each round
    metrics: list[dict[str, Any]]
    rounds: list[list[Exchange]]
    x0: torch.Tensor


def run_strategy(
    strategy: Strategy,
    network: Network,
    num_rounds: int,
    initial: ArrayRecord | None = None,
    watch: Sequence[str] = ("g",),
) -> Run:
    """``strategy.start`` for ``num_rounds`` on ``network``; records the model and the watched
    strategy attributes after every round (through ``evaluate_fn``)."""
    initial = initial_arrays(0, network.features, network.classes) if initial is None else initial
    first = len(network.rounds)
    arrays: list[torch.Tensor] = []
    state: list[dict[str, torch.Tensor | None]] = []

    def evaluate(server_round: int, record: ArrayRecord) -> None:
        if server_round == 0:
            return None
        arrays.append(vec(record))
        snap: dict[str, torch.Tensor | None] = {}
        for name in watch:
            value = getattr(strategy, name)
            snap[name] = None if value is None else value.detach().to(torch.float64).clone()
        state.append(snap)
        return None

    result = strategy.start(
        grid=network.grid,
        initial_arrays=initial,
        num_rounds=num_rounds,
        train_config=ConfigRecord({}),
        evaluate_fn=evaluate,
    )
    metrics = [dict(result.train_metrics_clientapp[r]) for r in range(1, num_rounds + 1)]
    return Run(arrays, state, metrics, network.rounds[first:], vec(initial))
