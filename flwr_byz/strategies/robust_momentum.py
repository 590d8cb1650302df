"""RobustMomentum: worker (Polyak) momentum + robust aggregation (Karimireddy et al. 2021,
"Learning from History for Byzantine Robust Optimization", Alg. 2), with the clipping heuristic
of Malinovsky et al. 2024 (Byz-VR-MARINA-PP paper, Eq. (10)) for partial participation.

Per round k: each sampled client i updates its momentum at the model x^k sent to it,
``m_i = beta m_i + (1 - beta) grad f_i(x^k; minibatch)`` (kept in its ``context.state``; the
first step sets ``m_i = grad``) and returns ``m_i`` (op ``"momentum"``). The server aggregates

    g^k = ARAgg({m_i})                                                 (clip_alpha=None)
    g^k = g^{k-1} + ARAgg({clip_{lambda_k}(m_i - g^{k-1})}),  lambda_k = alpha ||x^k - x^{k-1}||

and steps ``x^{k+1} = x^k - gamma g^k``. The first round has no g^{k-1} and is not clipped.
A client's momentum moves only in the rounds it is sampled (a real deployment cannot make
unsampled clients compute); the paper's simulation updates every client every step.
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
from .method import POINT_KEY, VECTOR_KEY, MethodStrategy
from .updates import clip_rows, sgd_step

__all__ = ["RobustMomentum"]


class RobustMomentum(MethodStrategy):
    """Worker momentum + a robust aggregator (+ Eq. (10) clipping), as a Flower strategy.

    Parameters
    ----------
    aggregator : Aggregator | str (default: "median")
        The robust rule (object or spec string, e.g. ``"bucketing:2+median"``).
    f : int | None (default: None)
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
        f: int | None = None,
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
        self.g: torch.Tensor | None = None  # g^{k-1}, the last aggregate
        self.last_step = 0.0  # ||x^k - x^{k-1}||
        self._round = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample, send x^k with the ``momentum`` op."""
        self._start(server_round, arrays)
        context = f"{type(self).__name__} round {server_round}"
        nodes = self.sample(grid, self.clients_per_round, context)
        seeds = {n: self.draw_seed() for n in nodes}
        self._round = server_round
        return self.messages(
            nodes,
            {POINT_KEY: self.model_record()},
            config,
            {"op": "momentum", "beta": self.momentum, "batch-size": self.batch_size},
            lambda n: {"batch-seed": seeds[n]},
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
        level, clipped = None, 0
        if self.clip_alpha is not None and self.g is not None:
            level = self.clip_alpha * self.last_step
            deltas, clipped = clip_rows(checked.vectors - self.g.to(checked.vectors.dtype), level)
            agg = self.robust(self.aggregator, deltas, context)
            g = None if agg is None else self.g + agg.to(self.g.dtype)
        else:
            agg = self.robust(self.aggregator, checked.vectors, context)
            g = None if agg is None else agg.to(self.x.dtype)
        if g is not None:
            new_x = sgd_step(self.x, g, self.lr)
            self.last_step = float(torch.linalg.vector_norm(new_x - self.x))
            self.x, self.g = new_x, g
        metrics = self.metrics(
            checked,
            **{
                "clip-level": -1.0 if level is None else level,
                "clipped": clipped,
                "sampled": len(self._sent_nodes),
                "skipped": int(g is None),
            },
        )
        return self.model_record(), metrics

    def options(self) -> dict[str, Any]:
        return super().options() | {
            "worker momentum": self.momentum,
            "clip_alpha (Eq. 10)": "off" if self.clip_alpha is None else self.clip_alpha,
        }
