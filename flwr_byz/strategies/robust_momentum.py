"""RobustMomentum: worker (Polyak) momentum + robust aggregation (Karimireddy et al. 2021,
"Learning from History for Byzantine Robust Optimization", Alg. 2), with the Eq. (10) clipping
heuristic of Malinovsky et al. 2024 for partial participation, as a Flower strategy. The
algorithm is ``flwr_byz.methods.momentum``; this shell sends x^k with op ``momentum`` (``beta``
and a minibatch seed per node: ``momentum.plan_round``), validates the momenta m_i and calls
``momentum.server_step``. Each client keeps m_i in ``context.state`` and moves it only in the
rounds it is sampled (a real deployment cannot make unsampled clients compute); the paper's
simulation updates every client every step.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from ..aggregators import Aggregator
from ..methods import momentum
from ..methods.momentum import MomentumState
from ..methods.surface import AttackSurface
from ..protocol.keys import (
    BATCH_SEED_KEY,
    BATCH_SIZE_KEY,
    BETA_KEY,
    OP_KEY,
    OP_MOMENTUM,
    POINT_KEY,
    SAMPLED_KEY,
    SKIPPED_KEY,
    VECTOR_KEY,
)
from .method import MethodStrategy
from .sample_check import FArg

__all__ = ["RobustMomentum"]


class RobustMomentum(MethodStrategy):
    """Worker momentum + a robust aggregator (+ Eq. (10) clipping), as a Flower strategy.

    Parameters
    ----------
    aggregator : Aggregator | str (default: "median")
        The robust rule (object or spec string, e.g. ``"bucketing:2+median"``).
    f : int | "auto" | None (default: None)
        Byzantine inputs per round the rule tolerates.
    lr : float (default: 0.1)
        Server step size gamma.
    momentum : float (default: 0.9)
        Worker momentum beta in [0, 1).
    batch_size : int (default: 32)
        Minibatch size of the clients' stochastic gradients (0: full local data).
    clients_per_round : int (default: 4)
        Clients sampled per round.
    clip_alpha : float | None (default: None)
        Eq. (10): clip ``m_i - g^{k-1}`` to ``clip_alpha ||x^k - x^{k-1}||``; None: off.
    min_available_nodes : int (default: 1)
        Wait until this many nodes are connected.
    seed : int (default: 0)
        Seeds sampling and minibatches.
    """

    def __init__(
        self,
        aggregator: Aggregator | str = "median",
        f: FArg = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        batch_size: int = 32,
        clients_per_round: int = 4,
        clip_alpha: float | None = None,
        min_available_nodes: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if clip_alpha is not None and not clip_alpha > 0:
            raise ValueError(f"clip_alpha must be > 0 or None (no clipping), got {clip_alpha}")
        self.momentum = float(momentum)
        self.clip_alpha = clip_alpha
        super().__init__(
            aggregator=aggregator,
            f=f,
            lr=lr,
            batch_size=batch_size,
            clients_per_round=clients_per_round,
            min_available_nodes=min_available_nodes,
            seed=seed,
        )

    def _reset_method(self) -> None:
        self._round = 0

    def _init_state(self, x: torch.Tensor) -> MomentumState:
        return MomentumState(x=x, x0=x.clone())

    @property
    def g(self) -> torch.Tensor | None:
        """g^{k-1}, the last aggregate (None before the first step)."""
        return None if self.state is None else self.state.g

    @property
    def last_step(self) -> float:
        """``||x^k - x^{k-1}||``."""
        return 0.0 if self.state is None else self.state.last_step

    def attack_surface(self) -> AttackSurface:
        """``methods.momentum.attack_surface``: the momenta are aggregated as they arrive."""
        return momentum.attack_surface(self.current, self.lr)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample, send x^k with the ``momentum`` op."""
        self._start(server_round, arrays)
        context = f"{type(self).__name__} round {server_round}"
        nodes = self.connected(grid, self.clients_per_round, context)
        plan = momentum.plan_round(self._rng, nodes, self.clients_per_round)
        self.sent_to(plan.nodes)
        self._round = server_round
        return self.messages(
            plan.nodes,
            {POINT_KEY: self.model_record()},
            config,
            {OP_KEY: OP_MOMENTUM, BETA_KEY: self.momentum, BATCH_SIZE_KEY: self.batch_size},
            lambda n: {BATCH_SEED_KEY: plan.batch_seed(n)},
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the momenta (clipped around g^{k-1} with clip_alpha), step."""
        context = f"{type(self).__name__} round {server_round}"
        if self._round != server_round or self.x is None:
            log(WARNING, "%s: nothing was sent this round; nothing to aggregate", context)
            return None, None
        checked = self.validate(replies, {VECTOR_KEY: self.layout}, context)
        self.state, stats = momentum.server_step(
            self.state,
            checked.vectors,
            lambda rows: self.robust(self.aggregator, rows, context),
            lr=self.lr,
            clip_alpha=self.clip_alpha,
        )
        level = stats["clip_level"]
        metrics = self.metrics(
            checked,
            **{
                "clip-level": -1.0 if level is None else level,
                "clipped": stats["clipped"],
                SAMPLED_KEY: len(self._sent_nodes),
                SKIPPED_KEY: stats["skipped"],
            },
        )
        return self.model_record(), metrics

    def options(self) -> dict[str, Any]:
        return super().options() | {
            "worker momentum": self.momentum,
            "clip_alpha (Eq. 10)": "off" if self.clip_alpha is None else self.clip_alpha,
        }
