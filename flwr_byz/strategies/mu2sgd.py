"""Mu2SGD: mu2-SGD (Dahan & Levy 2024, "Fault Tolerant ML: Efficient Meta-Aggregation and
Synchronous Training", arXiv 2405.14759) as a Flower strategy. The algorithm (double momentum:
corrected momentum on the clients, AnyTime averaging on the server) is
``flwr_byz.methods.mu2sgd``; this shell holds its state and, per round t, sends the query point
x_t with op ``double`` and beta_t (``mu2sgd.plan_round``, ``begin_round``), validates the
replies d_i and calls ``mu2sgd.server_step``. Each client keeps d_i and its previous point in
``context.state`` (``GradientClient.double_momentum``).
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
from ..methods import mu2sgd
from ..methods.mu2sgd import Mu2State, anytime_weight, corrected_beta
from ..methods.surface import AttackSurface
from ..protocol.keys import (
    BATCH_SEED_KEY,
    BATCH_SIZE_KEY,
    BETA_KEY,
    OP_DOUBLE,
    OP_KEY,
    POINT_KEY,
    SAMPLED_KEY,
    SKIPPED_KEY,
    VECTOR_KEY,
)
from .method import MethodStrategy
from .sample_check import FArg

__all__ = ["Mu2SGD", "anytime_weight"]


class Mu2SGD(MethodStrategy):
    """mu2-SGD (module doc) as a Flower strategy.

    Parameters
    ----------
    aggregator : Aggregator | str (default: "ctma+median")
        Agg of the clients' corrected momenta (the paper: CTMA over Median / TrimmedMean /
        GeoMed).
    f : int | "auto" | None (default: None)
        Byzantine inputs per round the rule tolerates.
    lr : float (default: 0.1)
        eta, the step of the w sequence.
    batch_size : int (default: 4)
        One minibatch per round and client (the reference code: 4).
    clients_per_round : int | None (default: None)
        Clients sampled per round (None: all).
    alpha_lr : bool (default: False)
        The paper's convex version: step ``eta alpha_t`` instead of eta.
    floor : float (default: 0.0)
        Lower bound of beta_t and gamma_t (the reference code uses 0.01).
    min_available_nodes : int (default: 1)
        Wait until this many nodes are connected.
    seed : int (default: 0)
        Seeds sampling and minibatches.
    """

    def __init__(
        self,
        aggregator: Aggregator | str = "ctma+median",
        f: FArg = None,
        lr: float = 0.1,
        batch_size: int = 4,
        clients_per_round: int | None = None,
        alpha_lr: bool = False,
        floor: float = 0.0,
        min_available_nodes: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0 <= floor < 1:
            raise ValueError(f"floor must be in [0, 1), got {floor}")
        self.alpha_lr = bool(alpha_lr)
        self.floor = float(floor)
        super().__init__(
            aggregator=aggregator,
            f=f,
            lr=lr,
            batch_size=batch_size,
            clients_per_round=clients_per_round,
            min_available_nodes=min_available_nodes,
            seed=seed,
        )

    def _init_state(self, x: torch.Tensor) -> Mu2State:
        return Mu2State.start(x)  # w_1 = x_1 = x^0

    @property
    def w(self) -> torch.Tensor | None:
        """w_t (None before round 1)."""
        return None if self.state is None else self.state.w

    @property
    def t(self) -> int:
        """The step being taken (rounds sent)."""
        return 0 if self.state is None else self.state.t

    def attack_surface(self) -> AttackSurface:
        """``methods.mu2sgd.attack_surface``: ShiftBack's d_hat lands x_{t+1} on x^0."""
        return mu2sgd.attack_surface(
            self.current, self.lr, alpha_lr=self.alpha_lr, floor=self.floor
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the query point x_t with op ``double`` and beta_t = 1/t."""
        self._start(server_round, arrays)
        self.state = mu2sgd.begin_round(self.state)
        context = f"{type(self).__name__} round {server_round}"
        nodes = self.connected(grid, self.clients_per_round, context)
        plan = mu2sgd.plan_round(self._rng, nodes, self.clients_per_round)
        self.sent_to(plan.nodes)
        return self.messages(
            plan.nodes,
            {POINT_KEY: self.model_record()},
            config,
            {
                OP_KEY: OP_DOUBLE,
                BETA_KEY: corrected_beta(self.t, self.floor),
                BATCH_SIZE_KEY: self.batch_size,
            },
            lambda n: {BATCH_SEED_KEY: plan.batch_seed(n)},
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``w -= eta Agg(d)``, then the AnyTime average ``x``."""
        context = f"{type(self).__name__} round {server_round}"
        if self.state is None or self.server_round != server_round:
            log(WARNING, "%s: nothing was sent this round; nothing to aggregate", context)
            return None, None
        checked = self.validate(replies, {VECTOR_KEY: self.layout}, context)
        self.state, stats = mu2sgd.server_step(
            self.state,
            checked.vectors,
            lambda rows: self.robust(self.aggregator, rows, context),
            lr=self.lr,
            alpha_lr=self.alpha_lr,
            floor=self.floor,
        )
        metrics = self.metrics(
            checked,
            **{
                "beta": stats["beta"],
                "gamma": stats["gamma"],
                SAMPLED_KEY: len(self._sent_nodes),
                SKIPPED_KEY: stats["skipped"],
            },
        )
        return self.model_record(), metrics

    def options(self) -> dict[str, Any]:
        return super().options() | {"alpha_t step": self.alpha_lr, "floor": self.floor}
