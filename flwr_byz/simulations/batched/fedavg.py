"""The FedAvg family on the batched engine: ``robust-fedavg``, ``fedavg`` and Flower's
``flower-*`` strategies. The clients' local epochs are batched (``grads.local_sgd``:
one ``torch.func`` call per SGD step for all clients) and the attack rewrites the stacked
updates ``reply - model sent`` (``attack``), as ``ByzantineGrid`` does it.

- ``robust-fedavg`` (:class:`RobustFedAvgDriver`): Flower's FedAvg sample
  (``methods.fedavg.plan_round`` from the round's seed), the validation of
  ``strategies.validation`` and ``methods.fedavg.server_step`` on the stacked models.
- ``fedavg`` (:class:`RobustFedAvgDriver` with ``mean``): the same round with Flower's
  sample-weighted mean in its own order of operations (:func:`flower_mean`: the same bits).
- ``flower-*`` (:class:`FedAvgDriver`): Flower's own strategy object samples and aggregates; it
  gets real reply Messages built from the clients' models, so its aggregation is Flower's code
  and the bytes are measured on the Messages themselves.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any, cast

import torch
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ...aggregators import set_client_ids
from ...attacks import SurfaceAttack
from ...clients import ByzantineGrid
from ...clients.injection import mark_label_flip
from ...methods import fedavg
from ...methods.common import guarded
from ...methods.surface import AttackSurface
from ...protocol.keys import NUM_EXAMPLES_KEY, POINT_KEY, SKIPPED_KEY, TRAIN_LOSS_KEY
from ...protocol.records import flatten, unflatten
from ..metering import message_bytes
from ..methods import build_strategy
from ..runner import train_config
from ..training import derive_seed
from .attack import attack_rows
from .bytes import WireSizes
from .grads import local_plan, local_sgd
from .setup import RoundOutcome, Setup

__all__ = ["FedAvgDriver", "RobustFedAvgDriver", "flower_mean", "local_training"]


class _Nodes:
    """The part of a Grid that a strategy's ``configure_train`` reads: the node IDs."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)


class FedAvgDriver:
    """Rounds of a FedAvg-like strategy (module doc)."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.strategy: Strategy = build_strategy(setup.cfg)
        self.arrays = setup.arrays
        self.grid = _Nodes(setup.node_ids)
        if setup.vector_attack is not None:  # ShiftBack: ByzantineGrid.bind's checks
            nodes = [p + 1 for p in setup.byzantine]
            grid = ByzantineGrid(cast(Grid, self.grid), setup.vector_attack, node_ids=nodes)
            grid.bind(self.strategy)

    def round(self, server_round: int) -> RoundOutcome:
        setup, cfg = self.setup, self.setup.cfg
        sent = list(
            self.strategy.configure_train(
                server_round, self.arrays, train_config(cfg), cast(Grid, self.grid)
            )
        )
        byz = set(setup.byzantine) if setup.attack is not None else set()
        if setup.attack is not None and setup.vector_attack is None:  # LabelFlip marks them
            sent = [
                mark_label_flip(m) if int(m.metadata.dst_node_id) - 1 in byz else m for m in sent
            ]
        down = sum(message_bytes(m) for m in sent)
        sent.sort(key=lambda m: int(m.metadata.dst_node_id))  # replies in partition order
        partitions = [int(m.metadata.dst_node_id) - 1 for m in sent]
        start = flatten(sent[0].content.array_records[POINT_KEY], setup.layout).to(setup.device)
        models, losses = local_training(setup, partitions, start, server_round)
        attack = setup.vector_attack
        if attack is not None:
            deltas, _ = attack_rows(
                attack, models - start, setup.byzantine_mask(partitions), vectors=models
            )
            models = start + deltas.to(start.dtype)
        replies = [
            self._reply(msg, row, float(loss), setup.data.sizes[p])
            for msg, row, loss, p in zip(
                sent, models.cpu(), losses.tolist(), partitions, strict=True
            )
        ]
        up = sum(message_bytes(r) for r in replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is not None:
            self.arrays = arrays
        vector = flatten(self.arrays, setup.layout).to(setup.device)
        numeric = {
            k: float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return RoundOutcome(vector, numeric, up, down)

    def _reply(self, msg: Message, row: torch.Tensor, loss: float, size: int) -> Message:
        """The ClientApp's train reply: the model and its metrics."""
        metrics = MetricRecord(
            {"train-loss": loss if math.isfinite(loss) else 0.0, "num-examples": size}
        )
        content = RecordDict({POINT_KEY: unflatten(row, self.setup.layout), "metrics": metrics})
        return Message(content=content, reply_to=msg)


def local_training(
    setup: Setup, partitions: list[int], start: torch.Tensor, server_round: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sampled client's ``train_epochs`` from ``start`` (the ClientApp's train: seed
    ``derive_seed(seed, round, partition)``), a Byzantine client's on its poisoned data under
    a backdoor attack (``Backdoor.poisoned``): (models ``[m, d]``, last-epoch losses ``[m]``)."""
    cfg, data = setup.cfg, setup.data
    seeds = [derive_seed(cfg.seed, server_round, p) for p in partitions]
    plan = local_plan(
        [data.offsets[p] for p in partitions],
        [data.sizes[p] for p in partitions],
        seeds,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
    )
    poisoned = (
        setup.backdoor.poisoned(data, partitions, server_round)
        if setup.backdoor is not None
        else nullcontext()
    )
    with poisoned:
        return local_sgd(
            setup.fm,
            start,
            data.x,
            data.y,
            plan,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )


class RobustFedAvgDriver:
    """RobustFedAvg's rounds without a Message per client (module doc); with ``mean``, Flower's
    own FedAvg (its sample-weighted mean, in its order of operations)."""

    def __init__(self, setup: Setup, mean: bool = False) -> None:
        self.setup = setup
        self.mean = mean
        self.strategy: Any = build_strategy(setup.cfg)
        self.state = fedavg.FedAvgState(setup.x0)
        self.wire = WireSizes(setup.layout, setup.x0, train_config(setup.cfg), method=False)
        self.sent = setup.x0
        attack = setup.vector_attack
        if mean and attack is not None:  # Flower's FedAvg has no surface: ByzantineGrid.bind
            nodes = [p + 1 for p in setup.byzantine]
            ByzantineGrid(cast(Grid, _Nodes(setup.node_ids)), attack, node_ids=nodes).bind(
                self.strategy
            )
        elif isinstance(attack, SurfaceAttack):  # ShiftBack: the update back to x^0
            attack.bind(self.surface())

    def surface(self) -> AttackSurface:
        return fedavg.attack_surface(lambda: self.sent, lambda: self.setup.x0)

    def _marked(self) -> Callable[[int], bool | str]:
        """The mark ByzantineGrid puts in a node's train message (the bytes down): a data
        attack's on the Byzantine nodes (LabelFlip's ``True``, a backdoor's spec), else
        False."""
        setup = self.setup
        if setup.backdoor is not None:
            return setup.backdoor.mark
        if setup.attack is None or setup.vector_attack is not None:
            return lambda node: False
        byz = set(setup.byzantine)
        return lambda node: node - 1 in byz

    def round(self, server_round: int) -> RoundOutcome:
        setup, s = self.setup, self.strategy
        nodes = setup.node_ids
        rng = random.Random(derive_seed(setup.cfg.seed, "sample", server_round))
        if s.fraction_train == 0.0:
            return RoundOutcome(self.state.x, {})
        size = max(int(len(nodes) * s.fraction_train), s.min_train_nodes)
        drawn = fedavg.plan_round(rng, nodes, size)  # FedAvg.configure_train's sample
        down = self.wire.down(
            server_round, drawn, {POINT_KEY: "model"}, {}, lambda n: {}, self._marked()
        )
        chosen = sorted(drawn)
        parts = [n - 1 for n in chosen]
        self.sent = self.state.x
        models, losses = local_training(setup, parts, self.state.x, server_round)
        attack = setup.vector_attack
        if attack is not None:
            deltas, _ = attack_rows(
                attack, models - self.sent, setup.byzantine_mask(parts), vectors=models
            )
            models = self.sent + deltas.to(self.sent.dtype)
        elif setup.backdoor is not None:  # model replacement: ByzantineGrid boosts the updates
            mask = setup.byzantine_mask(parts)
            deltas = models - self.sent
            boosted = setup.backdoor.boost(deltas, mask, len(drawn), server_round, models)
            if boosted is not deltas:  # the Byzantine replies rewritten, the others as sent
                rows = mask.to(models.device)
                models = models.clone()
                models[rows] = self.sent + boosted[rows].to(self.sent.dtype)
        sizes = [setup.data.sizes[p] for p in parts]
        reported = [v if math.isfinite(v) else 0.0 for v in losses.tolist()]
        up = self.wire.up(
            chosen,
            [POINT_KEY] * len(chosen),
            [
                {TRAIN_LOSS_KEY: v, NUM_EXAMPLES_KEY: m}
                for v, m in zip(reported, sizes, strict=True)
            ],
        )
        if self.mean:
            self.state = fedavg.FedAvgState(flower_mean(models, sizes))
            return RoundOutcome(self.state.x, _weighted_loss(reported, sizes), up, down)
        finite = torch.isfinite(models).all(dim=1)
        weights = torch.tensor(sizes, dtype=torch.float64, device=models.device)
        usable = weights > 0  # a finite positive sample count
        accepted = finite & usable if s.weighted else finite
        metrics = self._metrics(accepted, finite, usable, reported, sizes)
        aggregate = self._aggregate(weights[accepted])
        ids = [c for c, ok in zip(chosen, accepted.tolist(), strict=True) if ok]
        set_client_ids(s.aggregator, ids)  # a per-client rule (FoolsGold): row i is ids[i]
        self.state, stats = fedavg.server_step(
            self.state,
            models[accepted],
            aggregate,
            clip_alpha=s.clip_alpha,
        )
        metrics[SKIPPED_KEY] = float(stats["skipped"])
        return RoundOutcome(self.state.x, metrics, up, down)

    def _aggregate(self, weights: torch.Tensor) -> Any:
        s = self.strategy
        if s.weighted:
            return guarded(lambda u: s.aggregator.weighted(u, weights))
        return guarded(s.aggregator)

    def _metrics(
        self,
        accepted: torch.Tensor,
        finite: torch.Tensor,
        usable: torch.Tensor,
        losses: list[float],
        sizes: list[int],
    ) -> dict[str, float]:
        """FedAvg's weighted mean of the accepted replies' ``train-loss`` (replies with a
        usable sample count), then the validation counts."""
        flags = zip(accepted.tolist(), usable.tolist(), strict=True)
        keep = [a and u for a, u in flags]
        out = _weighted_loss(
            [v for v, k in zip(losses, keep, strict=True) if k],
            [m for m, k in zip(sizes, keep, strict=True) if k],
        )
        rejected_weight = int((finite & ~usable).sum()) if self.strategy.weighted else 0
        non_finite = int((~finite).sum())
        out["accepted"] = float(int(accepted.sum()))
        out["rejected"] = float(non_finite + rejected_weight)
        if rejected_weight:
            out["rejected-bad-weight"] = float(rejected_weight)
        if non_finite:
            out["rejected-non-finite"] = float(non_finite)
        return out


def _weighted_loss(losses: list[float], sizes: list[int]) -> dict[str, float]:
    """Flower's ``aggregate_metricrecords`` of the replies' ``train-loss`` weighted by
    ``num-examples``, in its order of operations (empty: no reply)."""
    if not losses:
        return {}
    total = sum(sizes)
    value = 0.0
    for i, (v, m) in enumerate(zip(losses, sizes, strict=True)):
        value = v * (m / total) if i == 0 else value + v * (m / total)
    return {TRAIN_LOSS_KEY: value}


def flower_mean(models: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Flower's FedAvg (``aggregate_arrayrecords``) of the models ``[m, d]`` with sample counts
    ``sizes``, bit for bit: ``w_i = n_i / sum n``, then ``agg = x_0 w_0``, ``agg += x_i w_i``
    in reply order (a sequential sum, as its NumPy loop; each step is one vector op)."""
    total = sum(sizes)
    factors = [m / total for m in sizes]
    agg = models[0] * factors[0]
    for i in range(1, models.shape[0]):
        agg += models[i] * factors[i]
    return agg
